//! The control API's errors and their gRPC status codes.
//!
//! Design: one enum says what kind of refusal it is; its text is the message a caller sees,
//! naming the field and the reason (`changes[1].upsert_pod.ip: 10.244.1.3 is also the
//! address of pods[web-1]`). Plain data; any thread may use it.

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// A field is malformed or its value cannot be applied (INVALID_ARGUMENT).
    #[error("{field}: {reason}")]
    Invalid {
        /// Path of the field in the request or the state.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A change names an object that does not exist (NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The change needs something the running switch cannot do now, such as a restart
    /// (FAILED_PRECONDITION).
    #[error("{0}")]
    Precondition(String),
    /// The switch is stopping or its dataplane is gone (UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
    /// Published, but not every worker ran it in time (DEADLINE_EXCEEDED).
    #[error("{0}")]
    NotProgrammed(String),
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> tonic::Status {
        let msg = e.to_string();
        match e {
            ApiError::Invalid { .. } => tonic::Status::invalid_argument(msg),
            ApiError::NotFound(_) => tonic::Status::not_found(msg),
            ApiError::Precondition(_) => tonic::Status::failed_precondition(msg),
            ApiError::Unavailable(_) => tonic::Status::unavailable(msg),
            ApiError::NotProgrammed(_) => tonic::Status::deadline_exceeded(msg),
        }
    }
}

impl From<flowtable::snapshot::StateError> for ApiError {
    fn from(e: flowtable::snapshot::StateError) -> ApiError {
        ApiError::Invalid {
            field: e.field,
            reason: e.reason,
        }
    }
}
