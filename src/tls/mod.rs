//! The webhook port's TLS as one slice: who may call (`client_auth`), the serving certificate's
//! renewal (`renewal`, pure), the Secret that keeps it for every replica (`secret`), and the
//! in-place resolver the server reads it through (`server`).

pub mod client_auth;
pub mod renewal;
pub mod secret;
mod server;

pub use server::{ClientAuthConfig, ReloadingCert, ServerTls, TlsError};
