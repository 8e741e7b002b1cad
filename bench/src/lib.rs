//! Frame builders shared by the benchmarks (see `benches/`).
