//! Loading a key and its certificate into ssh-agent, with a lifetime so the agent forgets
//! both when the certificate expires.
//!
//! Talks only to the agent socket it is given; it does not read the environment, write
//! files or print anything.

use std::path::{Path, PathBuf};

use ssh_agent_lib::agent::Session;
use ssh_agent_lib::client::Client;
use ssh_agent_lib::proto::{
    AddIdentity, AddIdentityConstrained, Credential, KeyConstraint, PrivateKeyData,
};
use ssh_key::{Algorithm, Certificate};
use tokio::net::UnixStream;

use crate::error::{Error, Result, source_chain};
use crate::keys::EphemeralKey;

/// A connection to ssh-agent.
#[derive(Debug)]
pub struct Agent {
    socket: PathBuf,
    client: Client<UnixStream>,
}

impl Agent {
    /// Connects to the agent listening on `socket` (the value of `SSH_AUTH_SOCK`).
    pub async fn connect(socket: &Path) -> Result<Self> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|err| Error::Agent {
                socket: socket.to_owned(),
                detail: format!("cannot connect: {err}"),
            })?;
        Ok(Agent {
            socket: socket.to_owned(),
            client: Client::new(stream),
        })
    }

    /// Adds `key` with `certificate`; the agent drops them after `lifetime_secs`.
    pub async fn add_certificate(
        &mut self,
        key: &EphemeralKey,
        certificate: &Certificate,
        lifetime_secs: u32,
        comment: String,
    ) -> Result<()> {
        let credential = Credential::Cert {
            algorithm: Algorithm::Ed25519,
            certificate: Box::new(certificate.clone()),
            privkey: PrivateKeyData::Ed25519(key.ed25519_keypair()?),
            comment,
        };
        let request = AddIdentityConstrained {
            identity: AddIdentity { credential },
            constraints: vec![KeyConstraint::Lifetime(lifetime_secs)],
        };
        self.client
            .add_identity_constrained(request)
            .await
            .map_err(|err| {
                let chain = source_chain(&err);
                Error::Agent {
                    socket: self.socket.clone(),
                    detail: if chain.is_empty() {
                        format!("the agent refused the certificate: {err}")
                    } else {
                        format!("the agent refused the certificate: {err}: {chain}")
                    },
                }
            })
    }
}
