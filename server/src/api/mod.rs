//! gRPC handlers: validate -> domain call -> map the error to a `Status`.
pub mod admin;
pub mod agent;
pub mod environments;
pub mod resources;

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

pub(crate) fn control_status(e: crate::controller::ControlError) -> Status {
    use crate::controller::ControlError as E;
    match e {
        E::NotFound(_) => Status::not_found(e.to_string()),
        E::Refused { .. } => Status::failed_precondition(e.to_string()),
        E::Invalid(_) => Status::invalid_argument(e.to_string()),
        E::Contention(_) => Status::aborted(e.to_string()),
        E::Store(s) => store_status(s),
        E::Load(_) | E::BadPhase(..) => Status::data_loss(e.to_string()),
    }
}
