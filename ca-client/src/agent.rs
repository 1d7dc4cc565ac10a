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

/// A certificate ssh-agent holds, as `ssh-add -l` would list it.
#[derive(Debug, Clone)]
pub struct HeldCertificate {
    /// The certificate, parsed from the agent's key blob.
    pub certificate: Certificate,
    /// The blob itself, which names this identity to `remove`.
    blob: Vec<u8>,
}

impl HeldCertificate {
    /// Whether moshca put it there: `login` and `ci` certificates carry the CA's
    /// `moshca:` key id.
    pub fn is_moshca(&self) -> bool {
        self.certificate.key_id().starts_with(MOSHCA_KEY_ID_PREFIX)
    }
}

/// The key id prefix of every certificate the CA signs.
pub const MOSHCA_KEY_ID_PREFIX: &str = "moshca:";

/// Agent protocol message numbers (draft-miller-ssh-agent), for the two requests
/// `ssh-agent-lib` cannot make with certificates present: its identity list decodes only
/// plain keys and fails on the first certificate.
const REQUEST_IDENTITIES: u8 = 11;
const IDENTITIES_ANSWER: u8 = 12;
const REMOVE_IDENTITY: u8 = 18;
const SUCCESS: u8 = 6;
/// Longest agent answer read; an agent full of keys answers in a few KiB.
const MAX_ANSWER: usize = 1 << 20;

/// The certificates the agent at `socket` holds; plain keys are skipped.
pub async fn certificates(socket: &Path) -> Result<Vec<HeldCertificate>> {
    let answer = exchange(socket, &[REQUEST_IDENTITIES]).await?;
    parse_identities(&answer).map_err(|detail| Error::Agent {
        socket: socket.to_owned(),
        detail,
    })
}

/// Removes one certificate identity from the agent at `socket`.
pub async fn remove(socket: &Path, held: &HeldCertificate) -> Result<()> {
    let mut message = vec![REMOVE_IDENTITY];
    put_string(&mut message, &held.blob);
    let answer = exchange(socket, &message).await?;
    if answer.first() == Some(&SUCCESS) {
        Ok(())
    } else {
        Err(Error::Agent {
            socket: socket.to_owned(),
            detail: format!(
                "the agent refused to remove the certificate {:?}",
                held.certificate.key_id()
            ),
        })
    }
}

/// Sends one framed message and reads one framed answer.
async fn exchange(socket: &Path, message: &[u8]) -> Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let failed = |err: std::io::Error| Error::Agent {
        socket: socket.to_owned(),
        detail: format!("cannot talk to the agent: {err}"),
    };
    let mut stream = UnixStream::connect(socket).await.map_err(failed)?;
    let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(message);
    stream.write_all(&framed).await.map_err(failed)?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.map_err(failed)?;
    let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    if len > MAX_ANSWER {
        return Err(Error::Agent {
            socket: socket.to_owned(),
            detail: format!("the agent's answer is too long ({len} bytes)"),
        });
    }
    let mut answer = vec![0u8; len];
    stream.read_exact(&mut answer).await.map_err(failed)?;
    Ok(answer)
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Reads an `SSH_AGENT_IDENTITIES_ANSWER`; keeps the identities whose blob is a
/// certificate.
fn parse_identities(answer: &[u8]) -> Result<Vec<HeldCertificate>, String> {
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if rest.len() < n {
            return Err("the agent's identity list is cut short".to_owned());
        }
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Ok(head)
    }
    fn number(rest: &mut &[u8]) -> Result<usize, String> {
        let bytes = take(rest, 4)?;
        let n = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
    fn string<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], String> {
        let n = number(rest)?;
        take(rest, n)
    }
    let mut rest = answer;
    if take(&mut rest, 1)? != [IDENTITIES_ANSWER] {
        return Err("the agent did not list its identities".to_owned());
    }
    let count = number(&mut rest)?;
    let mut held = Vec::new();
    for _ in 0..count {
        let blob = string(&mut rest)?;
        let _comment = string(&mut rest)?;
        // Plain keys and certificates of kinds ssh-key cannot read are not ours.
        if let Ok(certificate) = Certificate::from_bytes(blob) {
            held.push(HeldCertificate {
                certificate,
                blob: blob.to_vec(),
            });
        }
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_lists_keep_certificates_and_refuse_truncation() {
        let mut answer = vec![IDENTITIES_ANSWER];
        answer.extend_from_slice(&1u32.to_be_bytes());
        put_string(&mut answer, b"not a certificate");
        put_string(&mut answer, b"comment");
        assert!(parse_identities(&answer).unwrap().is_empty());
        answer.truncate(answer.len() - 2);
        assert!(parse_identities(&answer).is_err());
        assert!(parse_identities(&[5]).is_err());
    }
}
