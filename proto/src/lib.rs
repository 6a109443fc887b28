//! Flint's wire types: the node API (`flint.node.v1`) and the host <-> agent
//! protocol (`flint.agent.v1`), with the frame codec the latter uses.
#![forbid(unsafe_code)]

#[cfg(feature = "grpc")]
pub mod node {
    pub mod v1 {
        tonic::include_proto!("flint.node.v1");
    }
}

pub mod agent {
    #[allow(clippy::large_enum_variant)]
    pub mod v1 {
        // Messages only (prost): the agent protocol has no gRPC service.
        include!(concat!(env!("OUT_DIR"), "/flint.agent.v1.rs"));
    }
}

pub mod frame;

/// OpenTelemetry's OTLP trace protocol (vendored protos), in the module
/// tree its generated code expects.
#[cfg(feature = "grpc")]
#[allow(clippy::all)]
pub mod opentelemetry {
    pub mod proto {
        pub mod common {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.common.v1");
            }
        }
        pub mod resource {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.resource.v1");
            }
        }
        pub mod trace {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.trace.v1");
            }
        }
        pub mod collector {
            pub mod trace {
                pub mod v1 {
                    tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
                }
            }
        }
    }
}

/// Encoded file descriptor set of every Flint proto, for gRPC reflection.
#[cfg(feature = "grpc")]
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/flint_descriptor.bin"));
