//! switchd library.
