//! Signing people in to the CA through its identity provider, and choosing the credential
//! every other command sends: `moshca auth login|status|logout`, and [`connect`].
//!
//! A token configured the old ways (`--token-file`, `MOSHCA_TOKEN`, `MOSHCA_TOKEN_FILE`,
//! `token_file`) always wins. Without one, the session from the session file is used when
//! the CA still accepts it; when there is none, or it expired or was ended, and the CA
//! offers SSO, the person is told why and signed in on the spot. The IdP protocol is in
//! [`sso`], the file in [`session`]; this module reads the clock only through [`clock`].
//!
//! [`sso`]: crate::sso
//! [`session`]: crate::session
//! [`clock`]: crate::clock

use moshca_proto::v1::{
    CreateSessionRequest, DeleteSessionRequest, GetSignInInfoRequest, SignInInfo, WhoAmIRequest,
};
use tonic::Code;

use crate::cli::{AuthCommand, AuthLoginArgs};
use crate::config::{Env, Settings};
use crate::error::{Error, Result, one_line};
use crate::output::{Output, notice, rfc3339, warning};
use crate::rpc::{self, Client};
use crate::session::{self, SessionFile};
use crate::sso::{self, Flow, Provider};

/// Runs `moshca auth ...`.
pub async fn run(command: &AuthCommand, settings: &Settings, env: &Env, out: Output) -> Result<()> {
    match command {
        AuthCommand::Login(args) => login(args, settings, env, out).await,
        AuthCommand::Status => status(settings, env, out).await,
        AuthCommand::Logout => logout(settings, env, out).await,
    }
}

/// `moshca auth login [--device]`.
async fn login(args: &AuthLoginArgs, settings: &Settings, env: &Env, out: Output) -> Result<()> {
    let mut anonymous = rpc::connect(&settings.server, &settings.ca_cert, None).await?;
    let info = sign_in_info(&mut anonymous).await?;
    if !info.enabled {
        return Err(Error::SsoDisabled {
            server: settings.server.clone(),
        });
    }
    let flow = if args.device {
        Flow::Device
    } else {
        Flow::Browser
    };
    let file = sign_in(&mut anonymous, info, settings, env, flow).await?;
    if settings.token.is_some() {
        warning(
            "a token is configured (--token-file, MOSHCA_TOKEN, MOSHCA_TOKEN_FILE or \
             token_file), and it is what commands send; unset it to use this session",
        );
    }
    out.signed_in(&file, crate::clock::now_unix())
}

/// `moshca auth status`: what the CA says about the credential this client sends.
async fn status(settings: &Settings, env: &Env, out: Output) -> Result<()> {
    let token = match &settings.token {
        Some(_) => settings.token()?,
        None => {
            let path = session::path(env).ok_or(Error::NoConfigDir)?;
            match session::load(&path, &settings.server)? {
                Some(file) => file.token()?,
                None => return Err(Error::NotSignedIn),
            }
        }
    };
    let mut client = rpc::connect(&settings.server, &settings.ca_cert, Some(&token)).await?;
    drop(token);
    let who = client
        .who_am_i(WhoAmIRequest {})
        .await
        .map_err(|status| session_error("who am I", &status))?
        .into_inner();
    out.auth_status(&who, crate::clock::now_unix())
}

/// `moshca auth logout`: ends the session at the CA, then deletes the file. When the CA
/// cannot be reached the file is deleted all the same, with a warning that the session
/// lives on at the CA until it expires.
async fn logout(settings: &Settings, env: &Env, out: Output) -> Result<()> {
    let path = session::path(env).ok_or(Error::NoConfigDir)?;
    let Some(file) = session::load(&path, &settings.server)? else {
        return out.signed_out(None);
    };
    let token = file.token()?;
    let ended = match rpc::connect(&settings.server, &settings.ca_cert, Some(&token)).await {
        Ok(mut client) => client
            .delete_session(DeleteSessionRequest {})
            .await
            .map(|answer| answer.into_inner().id)
            .map_err(|status| Error::rpc("end session", &status)),
        Err(err) => Err(err),
    };
    drop(token);
    session::remove(&path)?;
    match ended {
        Ok(id) => out.signed_out(Some(if id.is_empty() { &file.id } else { &id })),
        Err(Error::Rpc {
            code: Code::Unauthenticated,
            ..
        }) => out.signed_out(Some(&file.id)),
        Err(err) => {
            warning(&format!(
                "the CA could not end session {}: {err}; the session file was deleted, but the \
                 session works until {} unless an operator ends it (`moshca-server session \
                 revoke {}`)",
                file.id,
                rfc3339(file.expires_at),
                file.id
            ));
            out.signed_out(Some(&file.id))
        }
    }
}

/// A client sending the credential commands use: the configured token, else the session,
/// signing in first (with a notice saying why) when there is no usable session and the CA
/// offers SSO.
pub async fn connect(settings: &Settings, env: &Env) -> Result<Client> {
    if settings.token.is_some() {
        let token = settings.token()?;
        return rpc::connect(&settings.server, &settings.ca_cert, Some(&token)).await;
    }
    let path = session::path(env);
    let now = crate::clock::now_unix();
    let stored = match &path {
        Some(path) => session::load(path, &settings.server)?,
        None => None,
    };
    let reason = match stored {
        None => "you are not signed in to the CA".to_owned(),
        Some(file) if file.expired(now) => {
            format!("your CA session expired at {}", rfc3339(file.expires_at))
        }
        Some(file) => {
            let token = file.token()?;
            let mut client =
                rpc::connect(&settings.server, &settings.ca_cert, Some(&token)).await?;
            // One cheap call tells whether the CA still accepts the session, before a
            // command starts something it could not finish (a request waiting for approval).
            match client.who_am_i(WhoAmIRequest {}).await {
                Ok(_) => return Ok(client),
                Err(status) if status.code() == Code::Unauthenticated => {
                    let message = one_line(status.message());
                    message
                        .split("; run `moshca auth login`")
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                }
                Err(status) => return Err(Error::rpc("who am I", &status)),
            }
        }
    };
    let mut anonymous = rpc::connect(&settings.server, &settings.ca_cert, None).await?;
    let info = match sign_in_info(&mut anonymous).await {
        Ok(info) if info.enabled => info,
        // Without SSO at the CA, what is missing is a token.
        Ok(_) => return Err(Error::MissingToken),
        Err(Error::Rpc {
            code: Code::Unimplemented | Code::FailedPrecondition,
            ..
        }) => return Err(Error::MissingToken),
        Err(err) => return Err(err),
    };
    if path.is_none() {
        return Err(Error::NoConfigDir);
    }
    notice(&format!("{reason}; signing in (`moshca auth login`)"));
    let file = sign_in(&mut anonymous, info, settings, env, Flow::Browser).await?;
    notice(&format!(
        "signed in as {} until {}",
        file.user,
        rfc3339(file.expires_at)
    ));
    let token = file.token()?;
    rpc::connect(&settings.server, &settings.ca_cert, Some(&token)).await
}

async fn sign_in_info(client: &mut Client) -> Result<SignInInfo> {
    client
        .get_sign_in_info(GetSignInInfoRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| Error::rpc("get sign-in info", &status))
}

/// Signs in at the identity provider with `flow` (the browser falls back to the device
/// grant when none can be started), trades the ID token for a CA session and saves it.
async fn sign_in(
    client: &mut Client,
    info: SignInInfo,
    settings: &Settings,
    env: &Env,
    flow: Flow,
) -> Result<SessionFile> {
    let path = session::path(env).ok_or(Error::NoConfigDir)?;
    let provider = Provider {
        issuer: info.issuer,
        client_id: info.client_id,
        scopes: if info.scopes.is_empty() {
            vec!["openid".to_owned()]
        } else {
            info.scopes
        },
    };
    let browser = env.browser.clone();
    // The IdP exchanges and the loopback wait block; the runtime's blocking pool keeps the
    // reactor free.
    let signed_in = tokio::task::spawn_blocking(move || {
        let endpoints = sso::discover(&provider.issuer)?;
        if flow == Flow::Browser {
            if let Some(signed_in) =
                sso::browser_sign_in(&provider, &endpoints, browser.as_deref())?
            {
                return Ok(signed_in);
            }
            notice("no browser could be started; signing in with a code instead");
        }
        sso::device_sign_in(&provider, &endpoints)
    })
    .await
    .map_err(|err| Error::SignIn {
        detail: err.to_string(),
    })??;
    let session = client
        .create_session(CreateSessionRequest {
            id_token: signed_in.id_token.to_string(),
            nonce: signed_in.nonce.clone(),
        })
        .await
        .map_err(|status| {
            if status.code() == Code::Unauthenticated {
                Error::SessionRefused {
                    message: one_line(status.message()),
                }
            } else {
                Error::rpc("create session", &status)
            }
        })?
        .into_inner();
    let file = SessionFile::new(&settings.server, &session);
    session::save(&path, &file)?;
    Ok(file)
}

/// The error for a call refused with the session: UNAUTHENTICATED says to sign in again.
fn session_error(call: &'static str, status: &tonic::Status) -> Error {
    match Error::rpc(call, status) {
        Error::Rpc {
            code: Code::Unauthenticated,
            message,
            ..
        } if message.contains("session") => Error::SessionEnded { message },
        other => other,
    }
}
