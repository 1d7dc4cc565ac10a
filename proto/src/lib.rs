//! The `moshca.v1` API: messages, the `CertificateAuthority` service and its client,
//! generated from `moshca/v1/*.proto`.
//!
//! Nothing but generated code lives here; the server and client convert these types at
//! their edges and never let them into their domain code.

#![allow(missing_docs, clippy::all, missing_debug_implementations)]

/// Version 1 of the API.
pub mod v1 {
    tonic::include_proto!("moshca.v1");

    /// Encoded file descriptors, for the gRPC reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("moshca_descriptor");
}
