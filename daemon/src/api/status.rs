//! The one place where errors become gRPC statuses, with Lambda's exception
//! names at the start of the message.

use tonic::{Code, Status};

use crate::broker::BrokerError;
use crate::error_chain as chain;
use crate::events::EventsError;
use crate::functions::FunctionsError;
use crate::invoke::InvokeError;
use crate::launch::{LaunchError, START_QUEUE_REASON};
use crate::node::NodeError;
use crate::packages::PackageError;
use crate::pool::PoolError;
use crate::sources::SourcesError;

fn status(code: Code, exception: &str, message: impl std::fmt::Display) -> Status {
    Status::new(code, format!("{exception}: {message}"))
}

fn functions(e: &FunctionsError) -> Status {
    match e {
        FunctionsError::NotFound(_) => status(Code::NotFound, "ResourceNotFoundException", e),
        FunctionsError::AlreadyExists(_) | FunctionsError::AliasExists(_) => {
            status(Code::AlreadyExists, "ResourceConflictException", e)
        }
        FunctionsError::AliasNotFound(_) | FunctionsError::LayerNotFound(_) => {
            status(Code::NotFound, "ResourceNotFoundException", e)
        }
        FunctionsError::ProvisionedNotFound(_) => status(
            Code::NotFound,
            "ProvisionedConcurrencyConfigNotFoundException",
            e,
        ),
        FunctionsError::Invalid { .. } => {
            status(Code::InvalidArgument, "InvalidParameterValueException", e)
        }
        FunctionsError::ScalingInvalid(_) => {
            status(Code::InvalidArgument, "ValidationException", e)
        }
        FunctionsError::EventConfigNotFound(_) => {
            status(Code::NotFound, "ResourceNotFoundException", e)
        }
        FunctionsError::ScalingNotFound(_) => status(Code::NotFound, "ObjectNotFoundException", e),
        FunctionsError::PreconditionFailed { .. } => {
            status(Code::FailedPrecondition, "PreconditionFailedException", e)
        }
        FunctionsError::UpdateConflict(_) => status(Code::Aborted, "ResourceConflictException", e),
        FunctionsError::Store(_) | FunctionsError::Corrupt(..) => {
            status(Code::Internal, "ServiceException", chain(e))
        }
    }
}

fn package(e: &PackageError) -> Status {
    match e {
        PackageError::TooLargeZipped { .. } => {
            status(Code::InvalidArgument, "RequestEntityTooLargeException", e)
        }
        PackageError::TooLargeUnzipped => {
            status(Code::InvalidArgument, "InvalidParameterValueException", e)
        }
        PackageError::NotZip(_) | PackageError::BadEntry { .. } | PackageError::Handler(_) => {
            status(Code::InvalidArgument, "InvalidParameterValueException", e)
        }
        PackageError::Store(_) => status(Code::Internal, "ServiceException", e),
    }
}

fn invoke(e: &InvokeError) -> Status {
    match e {
        InvokeError::Functions(f) => functions(f),
        InvokeError::PayloadTooLarge { .. } => {
            status(Code::InvalidArgument, "RequestTooLargeException", e)
        }
        InvokeError::Layers(_) => status(Code::Unavailable, "ServiceException", e),
        InvokeError::ClientContext(_) => {
            status(Code::InvalidArgument, "InvalidParameterValueException", e)
        }
        InvokeError::EventUnsupported => {
            status(Code::Unimplemented, "InvalidParameterValueException", e)
        }
        InvokeError::Pool(p @ PoolError::Throttled { reason, .. }) => status(
            Code::ResourceExhausted,
            "TooManyRequestsException",
            format!("{p} (Reason: {})", reason.reason()),
        ),
        InvokeError::Launch(l @ LaunchError::StartQueue(_)) => status(
            Code::ResourceExhausted,
            "TooManyRequestsException",
            format!("{l} (Reason: {START_QUEUE_REASON})"),
        ),
        InvokeError::Launch(_) | InvokeError::Logs(_) => {
            status(Code::Unavailable, "ServiceException", chain(e))
        }
    }
}

fn events(e: &EventsError) -> Status {
    match e {
        EventsError::Invoke(i) => invoke(i),
        EventsError::PayloadTooLarge { .. } => {
            status(Code::InvalidArgument, "RequestTooLargeException", e)
        }
        EventsError::DiskFull => status(Code::ResourceExhausted, "ServiceException", e),
        EventsError::Store(_) | EventsError::Join(_) | EventsError::Commit(_) => {
            status(Code::Internal, "ServiceException", chain(e))
        }
    }
}

fn sources(e: &SourcesError) -> Status {
    match e {
        SourcesError::NotFound(_) | SourcesError::NoSchedule(_) => {
            status(Code::NotFound, "ResourceNotFoundException", e)
        }
        SourcesError::Expr(_) => status(Code::InvalidArgument, "ValidationException", e),
        SourcesError::Events(ev) => events(ev),
        SourcesError::Conflict(_) => status(Code::AlreadyExists, "ResourceConflictException", e),
        SourcesError::InUse(_) => status(Code::FailedPrecondition, "ResourceInUseException", e),
        SourcesError::Invalid { .. } | SourcesError::Filter(_) => {
            status(Code::InvalidArgument, "InvalidParameterValueException", e)
        }
        SourcesError::Broker(b) => broker(b),
        SourcesError::Functions(f) => functions(f),
        SourcesError::NoBroker => status(Code::FailedPrecondition, "ServiceUnavailable", e),
        SourcesError::Store(_) | SourcesError::Corrupt(_) => {
            status(Code::Internal, "ServiceException", chain(e))
        }
    }
}

fn broker(e: &BrokerError) -> Status {
    match e {
        BrokerError::NoSuchStream(_) => status(Code::NotFound, "ResourceNotFoundException", e),
        BrokerError::StreamExists(_) => status(Code::AlreadyExists, "ResourceInUseException", e),
        BrokerError::NoSuchQueue(_) => {
            status(Code::NotFound, "AWS.SimpleQueueService.NonExistentQueue", e)
        }
        BrokerError::Invalid { .. } => status(Code::InvalidArgument, "InvalidParameterValue", e),
        BrokerError::ReceiptHandleIsInvalid(_) => {
            status(Code::InvalidArgument, "ReceiptHandleIsInvalid", e)
        }
        BrokerError::Unreachable { .. } => status(Code::Unavailable, "ServiceUnavailable", e),
        BrokerError::Protocol(_) => status(Code::Internal, "InternalError", e),
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        match &e {
            NodeError::Functions(f) => functions(f),
            NodeError::Package(p) => package(p),
            NodeError::Invoke(i) => invoke(i),
            NodeError::CodeStorageExceeded { .. } => {
                status(Code::FailedPrecondition, "CodeStorageExceededException", &e)
            }
            NodeError::Events(ev) => events(ev),
            NodeError::Broker(b) => broker(b),
            NodeError::Sources(s) => sources(s),
            NodeError::NoBroker => status(Code::FailedPrecondition, "ServiceUnavailable", &e),
            NodeError::Observe(crate::observe::ObserveError::Invalid { .. }) => {
                status(Code::InvalidArgument, "InvalidParameterValue", &e)
            }
            NodeError::Observe(_) => status(Code::Internal, "ServiceException", chain(&e)),
            NodeError::Engine(_) | NodeError::DataDir(_) | NodeError::Join(_) => {
                status(Code::Internal, "ServiceException", chain(&e))
            }
        }
    }
}

impl From<crate::stacks::StackError> for Status {
    fn from(e: crate::stacks::StackError) -> Self {
        use crate::stacks::StackError as S;
        match e {
            S::Node(n) => n.into(),
            S::Template { .. } | S::Unsupported { .. } | S::Name(_) | S::MissingCode { .. } => {
                status(Code::InvalidArgument, "ValidationError", &e)
            }
            S::NotFound(_) => status(Code::NotFound, "ValidationError", &e),
            S::Busy { .. } => status(Code::FailedPrecondition, "ValidationError", &e),
            S::Exists(_) => status(Code::AlreadyExists, "AlreadyExistsException", &e),
            S::DeploymentFailed(_) => status(Code::Aborted, "DeploymentFailed", &e),
            S::Build { .. } => status(Code::FailedPrecondition, "BuildFailed", &e),
            S::Db(_) | S::Corrupt(_) | S::Internal(_) => {
                status(Code::Internal, "InternalFailure", chain(&e))
            }
        }
    }
}

impl From<crate::pipelines::PipelineError> for Status {
    fn from(e: crate::pipelines::PipelineError) -> Self {
        use crate::pipelines::PipelineError as P;
        match e {
            P::Node(n) => n.into(),
            P::Stack(s) => s.into(),
            P::Invalid(_) | P::Repository { .. } => {
                status(Code::InvalidArgument, "InvalidParameterValueException", &e)
            }
            P::NotFound(_) => status(Code::NotFound, "PipelineNotFoundException", &e),
            P::Exists(_) => status(Code::AlreadyExists, "PipelineNameInUseException", &e),
            P::Git(_) | P::Stage(_) | P::Db(_) | P::Corrupt(_) => {
                status(Code::Internal, "InternalFailure", chain(&e))
            }
        }
    }
}

/// A request field that failed validation at the API edge.
pub fn invalid(message: impl std::fmt::Display) -> Status {
    status(
        Code::InvalidArgument,
        "InvalidParameterValueException",
        message,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Throttle;

    #[test]
    fn lambda_names_and_codes() {
        let s: Status = NodeError::from(FunctionsError::NotFound("f".into())).into();
        assert_eq!(s.code(), Code::NotFound);
        assert!(s.message().starts_with("ResourceNotFoundException: "));
        let s: Status = NodeError::from(InvokeError::PayloadTooLarge { size: 7, limit: 6 }).into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().starts_with("RequestTooLargeException"));
        let s: Status = NodeError::from(PackageError::BadEntry {
            name: "../x".into(),
            reason: "escapes".into(),
        })
        .into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("../x"));
        let s: Status = NodeError::from(InvokeError::Pool(PoolError::Throttled {
            reason: Throttle::Reserved,
            detail: "busy".into(),
        }))
        .into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(
            s.message(),
            "TooManyRequestsException: Rate Exceeded: busy (Reason: ReservedFunctionConcurrentInvocationLimitExceeded)"
        );
    }
}
