//! gRPC handlers: validate -> domain call -> map the error to a `Status`.
pub mod admin;
pub mod agent;
pub mod environments;

use tonic::Status;

use crate::registry::RegisterError;
use crate::store::StoreError;

pub(crate) fn store_status(e: StoreError) -> Status {
    Status::unavailable(format!("store: {e}"))
}

pub(crate) fn register_status(e: RegisterError) -> Status {
    match e {
        RegisterError::Invalid(m) => Status::invalid_argument(m),
        RegisterError::Contention => Status::aborted(e.to_string()),
        RegisterError::Corrupt(..) => Status::data_loss(e.to_string()),
        RegisterError::Store(s) => store_status(s),
    }
}
