//! What the user reads: command results on stdout (human text or `--json`) and the
//! `moshca: ...` notices on stderr.
//!
//! This is the only module that writes stdout. It formats; it makes no calls, reads no
//! clock (callers pass `now`) and decides nothing. JSON field names are part of the contract
//! and must not change.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use moshca_proto::v1::{
    AccessRequest, AuditEvent, Decision, RevokeCertificatesResponse, State, WhoAmIResponse,
};
use serde::Serialize;

use crate::ci::IdentityFiles;
use crate::error::{Error, Result};
use crate::install::CaKeys;
use crate::session::SessionFile;

/// Where results go, and in which form.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    json: bool,
}

impl Output {
    /// Human text, or JSON when `json`.
    pub fn new(json: bool) -> Self {
        Output { json }
    }

    /// `moshca status`: the whole request.
    pub fn request(&self, request: &AccessRequest) -> Result<()> {
        if self.json {
            return print_json(&RequestView::from(request));
        }
        print_text(&describe(request))
    }

    /// `moshca request`: the id alone on a line (or the request as JSON).
    pub fn created(&self, request: &AccessRequest) -> Result<()> {
        if self.json {
            return print_json(&RequestView::from(request));
        }
        print_text(&format!("{}\n", request.id))
    }

    /// `moshca requests`: one line per request.
    pub fn requests(&self, requests: &[AccessRequest]) -> Result<()> {
        if self.json {
            let views: Vec<RequestView<'_>> = requests.iter().map(RequestView::from).collect();
            return print_json(&views);
        }
        if requests.is_empty() {
            notice("no matching requests");
            return Ok(());
        }
        print_text(&table(requests))
    }

    /// `moshca approve` / `moshca deny`: the request after the review.
    pub fn reviewed(&self, request: &AccessRequest, decision: Decision) -> Result<()> {
        if self.json {
            return print_json(&RequestView::from(request));
        }
        let id = &request.id;
        let line = match (decision, state(request)) {
            (Decision::Deny, _) => format!("denied request {id}\n"),
            (_, State::Issued) => format!("approved request {id}: certificate issued\n"),
            (_, State::Pending) => format!(
                "approved request {id}: {} of {} approvals, still pending\n",
                approvals(request),
                request.approvals_required
            ),
            (_, other) => format!("approved request {id}: now {}\n", state_name(other)),
        };
        print_text(&line)
    }

    /// `moshca review`: the break-glass request after its review.
    pub fn glass_reviewed(&self, request: &AccessRequest) -> Result<()> {
        if self.json {
            return print_json(&RequestView::from(request));
        }
        print_text(&format!(
            "reviewed break-glass request {}; it is no longer flagged\n",
            request.id
        ))
    }

    /// `moshca audit`: one line per event, oldest first.
    pub fn audit_events(&self, events: &[AuditEvent]) -> Result<()> {
        if self.json {
            let views: Vec<AuditEventView<'_>> = events.iter().map(AuditEventView::from).collect();
            return print_json(&views);
        }
        if events.is_empty() {
            notice("no matching audit events");
            return Ok(());
        }
        print_text(&audit_lines(events))
    }

    /// `moshca cancel`.
    pub fn cancelled(&self, request: &AccessRequest) -> Result<()> {
        if self.json {
            return print_json(&RequestView::from(request));
        }
        print_text(&format!("cancelled request {}\n", request.id))
    }

    /// `moshca fetch`: the certificate line on stdout, or a note that it went to `out`.
    pub fn fetched(&self, request: &AccessRequest, out: Option<&Path>, line: &str) -> Result<()> {
        if self.json {
            return print_json(&RequestView::from(request));
        }
        match out {
            None => print_text(&format!("{line}\n")),
            Some(path) => print_text(&format!(
                "wrote the certificate of request {} to {}\n",
                request.id,
                path.display()
            )),
        }
    }

    /// `moshca ca-keys`: the key lines, or a note that they went to `out`.
    pub fn ca_keys(&self, keys: &CaKeys, out: Option<&Path>) -> Result<()> {
        if self.json {
            #[derive(Serialize)]
            struct View<'a> {
                public_keys: &'a [String],
            }
            return print_json(&View {
                public_keys: keys.lines(),
            });
        }
        match out {
            None => print_text(&keys.text()),
            Some(path) => print_text(&format!(
                "wrote {} CA public key{} to {}\n",
                keys.len(),
                if keys.len() == 1 { "" } else { "s" },
                path.display()
            )),
        }
    }

    /// `moshca setup`: what was pinned and written.
    pub fn set_up(&self, written: &crate::setup::Written) -> Result<()> {
        if self.json {
            #[derive(Serialize)]
            struct View<'a> {
                config: String,
                ca_cert: String,
                fingerprint: &'a str,
                chain_position: usize,
            }
            return print_json(&View {
                config: written.config.to_string_lossy().into_owned(),
                ca_cert: written.ca_cert.to_string_lossy().into_owned(),
                fingerprint: &written.fingerprint,
                chain_position: written.chain_position,
            });
        }
        print_text(&format!(
            "trusting {} ({})\nwrote {}\nnext: set MOSHCA_TOKEN_FILE (or token_file in the config), then `moshca whoami`\n",
            written.ca_cert.display(),
            written.fingerprint,
            written.config.display()
        ))
    }

    /// `moshca revoke`: the serials newly revoked and the KRL version that has them.
    ///
    /// `key` is the fingerprint of a revoked public key: the key itself is in the KRL even
    /// when no certificate was newly revoked, which a notice on stderr says.
    pub fn revoked(&self, revoked: &RevokeCertificatesResponse, key: Option<&str>) -> Result<()> {
        if let Some(fingerprint) = key {
            notice(&format!(
                "key {fingerprint} is revoked for good: hosts refuse it and the CA will not \
                 certify it again"
            ));
        }
        if self.json {
            #[derive(Serialize)]
            struct View<'a> {
                #[serde(serialize_with = "wide::list")]
                serials: &'a [u64],
                #[serde(serialize_with = "wide::one")]
                krl_version: u64,
            }
            return print_json(&View {
                serials: &revoked.serials,
                krl_version: revoked.krl_version,
            });
        }
        print_text(&format!("{}\n", revoked_line(revoked)))
    }

    /// `moshca krl`: the KRL installed at `path`.
    pub fn krl_installed(&self, path: &Path, version: u64, bytes: usize) -> Result<()> {
        if self.json {
            return print_json(&KrlView {
                path: &path.to_string_lossy(),
                krl_version: version,
                bytes,
            });
        }
        print_text(&format!(
            "wrote KRL version {version} ({bytes} bytes) to {}\n",
            path.display()
        ))
    }

    /// `moshca host sync`: one line per file installed. Failures were reported on stderr
    /// already; in JSON they are the `error` field.
    pub fn host_synced(&self, report: &SyncReport<'_>) -> Result<()> {
        if self.json {
            #[derive(Serialize)]
            struct CaKeysView<'a> {
                path: &'a str,
                changed: bool,
                keys: Option<usize>,
                error: Option<String>,
            }
            #[derive(Serialize)]
            struct KrlSyncView<'a> {
                path: &'a str,
                changed: bool,
                #[serde(serialize_with = "wide::opt")]
                krl_version: Option<u64>,
                bytes: Option<usize>,
                error: Option<String>,
            }
            #[derive(Serialize)]
            struct View<'a> {
                ca_keys: CaKeysView<'a>,
                krl: KrlSyncView<'a>,
            }
            let ca_path = report.ca_keys_path.to_string_lossy();
            let krl_path = report.krl_path.to_string_lossy();
            return print_json(&View {
                ca_keys: CaKeysView {
                    path: &ca_path,
                    changed: report.ca_keys_changed,
                    keys: report.ca_keys.as_ref().ok().copied(),
                    error: report.ca_keys.as_ref().err().map(ToString::to_string),
                },
                krl: KrlSyncView {
                    path: &krl_path,
                    changed: report.krl_changed,
                    krl_version: report.krl.as_ref().ok().map(|&(v, _)| v),
                    bytes: report.krl.as_ref().ok().map(|&(_, n)| n),
                    error: report.krl.as_ref().err().map(ToString::to_string),
                },
            });
        }
        print_text(&host_sync_lines(report))
    }

    /// `moshca whoami`.
    pub fn whoami(&self, who: &WhoAmIResponse) -> Result<()> {
        if self.json {
            #[derive(Serialize)]
            struct View<'a> {
                name: &'a str,
                groups: &'a [String],
                requestable_roles: &'a [String],
                approvable_roles: &'a [String],
            }
            return print_json(&View {
                name: &who.name,
                groups: &who.groups,
                requestable_roles: &who.requestable_roles,
                approvable_roles: &who.approvable_roles,
            });
        }
        print_text(&format!(
            "name:        {}\ngroups:      {}\nmay request: {}\nmay approve: {}\n",
            who.name,
            list_or_none(&who.groups),
            list_or_none(&who.requestable_roles),
            list_or_none(&who.approvable_roles),
        ))
    }

    /// `moshca auth login` succeeded: who the CA signed in, and until when.
    pub fn signed_in(&self, file: &SessionFile, now: i64) -> Result<()> {
        if self.json {
            #[derive(Serialize)]
            struct View<'a> {
                user: &'a str,
                groups: &'a [String],
                provider: &'a str,
                session_id: &'a str,
                expires_at: String,
                expires_at_unix: i64,
            }
            return print_json(&View {
                user: &file.user,
                groups: &file.groups,
                provider: &file.issuer,
                session_id: &file.id,
                expires_at: rfc3339(file.expires_at),
                expires_at_unix: file.expires_at,
            });
        }
        print_text(&format!(
            "signed in as {} (groups: {}) through {}; session {} ends {} (in {})\n",
            file.user,
            list_or_none(&file.groups),
            file.issuer,
            file.id,
            rfc3339(file.expires_at),
            human_secs(u64::try_from(file.expires_at - now).unwrap_or(0)),
        ))
    }

    /// `moshca auth status`: the CA's view of the credential this client sends.
    pub fn auth_status(&self, who: &WhoAmIResponse, now: i64) -> Result<()> {
        let session = who.credential == "session";
        if self.json {
            #[derive(Serialize)]
            struct View<'a> {
                user: &'a str,
                groups: &'a [String],
                credential: &'a str,
                #[serde(skip_serializing_if = "Option::is_none")]
                provider: Option<&'a str>,
                #[serde(skip_serializing_if = "Option::is_none")]
                session_id: Option<&'a str>,
                #[serde(skip_serializing_if = "Option::is_none")]
                expires_at: Option<String>,
                #[serde(skip_serializing_if = "Option::is_none")]
                expires_at_unix: Option<i64>,
            }
            return print_json(&View {
                user: &who.name,
                groups: &who.groups,
                credential: &who.credential,
                provider: session.then_some(who.session_issuer.as_str()),
                session_id: session.then_some(who.session_id.as_str()),
                expires_at: session.then(|| rfc3339(who.session_expires_at)),
                expires_at_unix: session.then_some(who.session_expires_at),
            });
        }
        let mut text = format!(
            "user:       {}\ngroups:     {}\ncredential: {}\n",
            who.name,
            list_or_none(&who.groups),
            if who.credential.is_empty() {
                "token"
            } else {
                &who.credential
            }
        );
        if session {
            text.push_str(&format!(
                "provider:   {}\nsession:    {}\nexpires:    {} (in {})\n",
                who.session_issuer,
                who.session_id,
                rfc3339(who.session_expires_at),
                human_secs(u64::try_from(who.session_expires_at - now).unwrap_or(0)),
            ));
        }
        print_text(&text)
    }

    /// `moshca auth logout`: which session ended (`None`: there was none).
    pub fn signed_out(&self, id: Option<&str>) -> Result<()> {
        if self.json {
            return print_json(
                &serde_json::json!({ "signed_out": id.is_some(), "session_id": id }),
            );
        }
        match id {
            Some(id) => print_text(&format!("signed out: session {id} ended\n")),
            None => print_text("not signed in; nothing to do\n"),
        }
    }

    /// `moshca ci` succeeded: the certificate is in the agent (`files` is `None`) or in the
    /// files named, with the `ssh` options that use them.
    pub fn ci_issued(
        &self,
        request: &AccessRequest,
        valid_before: u64,
        now: i64,
        files: Option<&IdentityFiles>,
    ) -> Result<()> {
        if self.json {
            #[derive(Serialize)]
            struct View<'a> {
                #[serde(flatten)]
                request: RequestView<'a>,
                #[serde(skip_serializing_if = "Option::is_none")]
                identity_file: Option<String>,
                #[serde(skip_serializing_if = "Option::is_none")]
                certificate_file: Option<String>,
            }
            return print_json(&View {
                request: RequestView::from(request),
                identity_file: files.map(|f| f.key.to_string_lossy().into_owned()),
                certificate_file: files.map(|f| f.certificate.to_string_lossy().into_owned()),
            });
        }
        match files {
            None => print_text(&format!("{}\n", logged_in_line(request, valid_before, now))),
            Some(files) => print_text(&ci_files_lines(request, valid_before, now, files)),
        }
    }

    /// `moshca login` succeeded: the certificate is in the agent.
    pub fn logged_in(&self, request: &AccessRequest, valid_before: u64, now: i64) -> Result<()> {
        if self.json {
            return print_json(&RequestView::from(request));
        }
        print_text(&format!("{}\n", logged_in_line(request, valid_before, now)))
    }
}

/// Prints `moshca: {message}` on stderr.
pub fn notice(message: &str) {
    crate::progress::eprint(&format!("moshca: {message}\n"));
}

/// Announces on stderr that a break-glass request was issued without approval, and who
/// was told; warns when nobody was.
pub fn break_glass_granted(request: &AccessRequest) {
    notice(&break_glass_line(request));
    if request.notified.is_empty() {
        warning(NOBODY_NOTIFIED);
    }
}

/// The warning after a break-glass issuance no webhook hears of.
const NOBODY_NOTIFIED: &str = "nobody was notified: the CA has no webhook subscribed to \
                               request.break_glass; tell the role's approvers yourself";

/// The loud line `login --break-glass` and `request --break-glass` print on stderr.
fn break_glass_line(request: &AccessRequest) -> String {
    let told = if request.notified.is_empty() {
        "no webhook was notified".to_owned()
    } else {
        format!("notified: {}", request.notified.join(", "))
    };
    format!(
        "BREAK-GLASS access granted; {told}; request {} stays flagged until reviewed",
        request.id
    )
}

/// The approvers' comments on an issued request, one `approved by NAME: COMMENT` line
/// each, for the requester.
pub fn approver_comments(request: &AccessRequest) {
    for line in approval_lines(request) {
        notice(&line);
    }
}

fn approval_lines(request: &AccessRequest) -> Vec<String> {
    request
        .reviews
        .iter()
        .filter(|r| r.decision == Decision::Approve as i32 && !r.comment.trim().is_empty())
        .map(|r| {
            format!(
                "approved by {}: {}",
                r.approver,
                crate::error::one_line(&r.comment)
            )
        })
        .collect()
}

/// Writes `err` as `{"error": ..., "hint": ..., "exit": N}` on stdout, for `--json`.
pub fn error_json(err: &Error) {
    // Nothing is left to report a failed write to.
    let _ = print_json(&error_view(&err.to_string(), err.hint(), err.exit_code()));
}

/// The JSON shape of an error: the message, the hint (or null) and the exit code.
pub fn error_view(error: &str, hint: Option<String>, exit: u8) -> serde_json::Value {
    serde_json::json!({ "error": error, "hint": hint, "exit": exit })
}

/// Writes an error clap found in the command line as JSON on stdout.
pub fn usage_error_json(message: &str, exit: u8) {
    // clap's text: the error (maybe over several lines), a blank line, then tips and usage.
    let mut paragraphs = message.split("\n\n");
    let error = crate::error::one_line(paragraphs.next().unwrap_or_default());
    let error = match error.trim_start_matches("error: ") {
        "" => "invalid command line".to_owned(),
        text => text.to_owned(),
    };
    let hint = paragraphs
        .flat_map(str::lines)
        .map(str::trim)
        .find(|l| l.starts_with("tip:") || l.starts_with("Usage:"))
        .map(|l| format!("{l}; see --help"));
    let _ = print_json(&error_view(&error, hint, exit));
}

/// A certificate of the caller's that is live, and whether ssh-agent holds it.
#[derive(Debug)]
pub struct LiveCertificate<'a> {
    /// The issued request.
    pub request: &'a AccessRequest,
    /// Whether the agent holds it; `None` without an agent to ask.
    pub in_agent: Option<bool>,
}

/// A certificate `logout` removed from the agent.
#[derive(Debug)]
pub struct Removed {
    /// Its key id, `moshca:req=...`.
    pub key_id: String,
    /// Its serial.
    pub serial: u64,
    /// When it would have expired (Unix seconds).
    pub valid_before: u64,
}

impl Output {
    /// `moshca status` without an id: the caller's live certificates.
    pub fn live_certificates(&self, live: &[LiveCertificate<'_>], now: i64) -> Result<()> {
        if self.json {
            #[derive(Serialize)]
            struct View<'a> {
                #[serde(flatten)]
                request: RequestView<'a>,
                in_agent: Option<bool>,
            }
            let views: Vec<View<'_>> = live
                .iter()
                .map(|l| View {
                    request: RequestView::from(l.request),
                    in_agent: l.in_agent,
                })
                .collect();
            return print_json(&views);
        }
        if live.is_empty() {
            notice("no live certificates: none issued to you is unexpired and unrevoked");
            return Ok(());
        }
        print_text(&live_table(live, now))
    }

    /// `moshca logout`: the certificates removed from the agent.
    pub fn logged_out(&self, removed: &[Removed]) -> Result<()> {
        if self.json {
            #[derive(Serialize)]
            struct View<'a> {
                key_id: &'a str,
                #[serde(serialize_with = "wide::one")]
                serial: u64,
                valid_before: u64,
                valid_before_rfc3339: String,
            }
            let views: Vec<View<'_>> = removed
                .iter()
                .map(|r| View {
                    key_id: &r.key_id,
                    serial: r.serial,
                    valid_before: r.valid_before,
                    valid_before_rfc3339: rfc3339(
                        i64::try_from(r.valid_before).unwrap_or(i64::MAX),
                    ),
                })
                .collect();
            return print_json(&serde_json::json!({ "removed": views }));
        }
        if removed.is_empty() {
            notice("ssh-agent holds no moshca certificate; nothing to remove");
            return Ok(());
        }
        let mut text = String::new();
        for r in removed {
            text.push_str(&format!(
                "removed {} (serial {}) from ssh-agent\n",
                r.key_id, r.serial
            ));
        }
        print_text(&text)
    }

    /// `moshca completion SHELL`: the script as clap_complete wrote it.
    pub fn completion(&self, script: &str) -> Result<()> {
        print_text(script)
    }
}

/// One aligned line per live certificate, with a header.
fn live_table(live: &[LiveCertificate<'_>], now: i64) -> String {
    let mut rows = vec![[
        "REQUEST".to_owned(),
        "ROLE".to_owned(),
        "PRINCIPALS".to_owned(),
        "SERIAL".to_owned(),
        "VALID UNTIL".to_owned(),
        "IN AGENT".to_owned(),
    ]];
    for l in live {
        let r = l.request;
        let left = u64::try_from(r.valid_before.saturating_sub(now)).unwrap_or(0);
        rows.push([
            r.id.clone(),
            r.role.clone(),
            r.principals.join(","),
            r.serial.to_string(),
            format!("{} ({} left)", rfc3339(r.valid_before), human_secs(left)),
            match l.in_agent {
                Some(true) => "yes".to_owned(),
                Some(false) => "no".to_owned(),
                None => "?".to_owned(),
            },
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| {
            rows.iter()
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// Prints `moshca: warning: {message}` on stderr.
pub fn warning(message: &str) {
    crate::progress::eprint(&format!("moshca: warning: {message}\n"));
}

/// What `moshca host sync` did with each file: what was installed, or the error.
#[derive(Debug)]
pub struct SyncReport<'a> {
    /// The CA public keys file.
    pub ca_keys_path: &'a Path,
    /// How many keys were installed.
    pub ca_keys: Result<usize, &'a Error>,
    /// The KRL file.
    pub krl_path: &'a Path,
    /// The KRL version and size installed.
    pub krl: Result<(u64, usize), &'a Error>,
    /// Whether the CA keys file now holds something else than before.
    pub ca_keys_changed: bool,
    /// Whether the KRL file now holds something else than before.
    pub krl_changed: bool,
}

/// 64-bit numbers go out as JSON strings: jq, JavaScript and every reader that parses
/// numbers as doubles rounds them above 2^53, and a rounded serial names another
/// certificate (or none).
mod wide {
    use serde::Serializer;

    pub fn one<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn opt<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    pub fn list<S: Serializer>(v: &&[u64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(ToString::to_string))
    }
}

impl Output {
    /// `moshca host enroll|renew`: the certificate written to `path`.
    pub fn host_certified(
        &self,
        verb: &str,
        cert: &moshca_proto::v1::HostCertificate,
        path: &Path,
    ) -> Result<()> {
        if self.json {
            #[derive(Serialize)]
            struct View<'a> {
                path: &'a str,
                #[serde(serialize_with = "wide::one")]
                serial: u64,
                principals: &'a [String],
                valid_after: i64,
                valid_before: i64,
            }
            return print_json(&View {
                path: &path.to_string_lossy(),
                serial: cert.serial,
                principals: &cert.principals,
                valid_after: cert.valid_after,
                valid_before: cert.valid_before,
            });
        }
        print_text(&format!(
            "{verb} host certificate {} for {} to {}, valid until {}\n",
            cert.serial,
            cert.principals.join(", "),
            path.display(),
            rfc3339(cert.valid_before)
        ))
    }

    /// `moshca known-hosts`: the lines, or a note that they went to `out`.
    pub fn known_hosts(&self, lines: &[String], out: Option<&Path>) -> Result<()> {
        if self.json {
            #[derive(Serialize)]
            struct View<'a> {
                lines: &'a [String],
                path: Option<String>,
            }
            return print_json(&View {
                lines,
                path: out.map(|p| p.to_string_lossy().into_owned()),
            });
        }
        match out {
            None => print_text(&lines.iter().map(|l| format!("{l}\n")).collect::<String>()),
            Some(path) => print_text(&format!(
                "wrote {} @cert-authority line{} to {}\n",
                lines.len(),
                if lines.len() == 1 { "" } else { "s" },
                path.display()
            )),
        }
    }
}

/// The JSON form of an installed KRL.
#[derive(Debug, Serialize)]
struct KrlView<'a> {
    path: &'a str,
    #[serde(serialize_with = "wide::one")]
    krl_version: u64,
    bytes: usize,
}

/// `revoked N certificate(s): S1, S2; KRL version V`, or that nothing new was revoked.
fn revoked_line(revoked: &RevokeCertificatesResponse) -> String {
    let version = revoked.krl_version;
    if revoked.serials.is_empty() {
        return format!(
            "nothing newly revoked (already revoked or expired); KRL version {version}"
        );
    }
    let serials: Vec<String> = revoked.serials.iter().map(ToString::to_string).collect();
    format!(
        "revoked {} certificate(s): {}; KRL version {version}",
        serials.len(),
        serials.join(", ")
    )
}

/// `DIR/moshca_ca.pub: N key(s)` and `DIR/moshca.krl: version V, N bytes`, for the files
/// that changed: a timer that runs every minute logs nothing while nothing happens.
fn host_sync_lines(report: &SyncReport<'_>) -> String {
    let mut text = String::new();
    if let (Ok(keys), true) = (report.ca_keys, report.ca_keys_changed) {
        text.push_str(&format!(
            "{}: {keys} key(s)\n",
            report.ca_keys_path.display()
        ));
    }
    if let (Ok((version, bytes)), true) = (report.krl, report.krl_changed) {
        text.push_str(&format!(
            "{}: version {version}, {bytes} bytes\n",
            report.krl_path.display()
        ));
    }
    text
}

/// `certificate for request ID added to ssh-agent: principals P1,P2; valid until T (R)`.
fn logged_in_line(request: &AccessRequest, valid_before: u64, now: i64) -> String {
    format!(
        "certificate for request {} added to ssh-agent: {}",
        request.id,
        validity(request, valid_before, now)
    )
}

/// `certificate for request ID: principals P; valid until T (R)` and the `ssh` command
/// line that uses the files.
fn ci_files_lines(
    request: &AccessRequest,
    valid_before: u64,
    now: i64,
    files: &IdentityFiles,
) -> String {
    format!(
        "certificate for request {}: {}\nssh -i {} -o CertificateFile={} USER@HOST\n",
        request.id,
        validity(request, valid_before, now),
        files.key.display(),
        files.certificate.display()
    )
}

/// `principals P1,P2; valid until T (R)`.
fn validity(request: &AccessRequest, valid_before: u64, now: i64) -> String {
    let remaining = valid_before.saturating_sub(u64::try_from(now).unwrap_or(0));
    format!(
        "principals {}; valid until {} ({})",
        request.principals.join(","),
        rfc3339(i64::try_from(valid_before).unwrap_or(i64::MAX)),
        humantime::format_duration(Duration::from_secs(remaining)),
    )
}

/// Whether `c` is invisible or changes how the text around it is displayed (Unicode
/// categories Cc, Cf, Zl, Zp): a reason holding U+202E could make an approver read
/// another command than the one it is.
fn hidden(c: char) -> bool {
    use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory as _};
    matches!(
        c.general_category(),
        G::Control | G::Format | G::LineSeparator | G::ParagraphSeparator
    )
}

/// `text` with every [`hidden`] character but our own line breaks and tabs written as
/// a visible escape (`\u{202e}`).
fn escape_text(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| hidden(c) && c != '\n' && c != '\t') {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if hidden(c) && c != '\n' && c != '\t' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// JSON `text` with every non-ASCII [`hidden`] character written as a `\uXXXX` escape
/// (serde_json escapes the ASCII ones). Such characters can only stand inside strings,
/// so the value is the same; only what a terminal shows changes.
fn escape_json(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| !c.is_ascii() && hidden(c)) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !c.is_ascii() && hidden(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// Writes `text` to stdout; a closed pipe (`moshca requests | head`) is not an error.
/// Characters that hide or reorder text are escaped: the only stdout writer is where
/// that rule can hold for every command.
fn print_text(text: &str) -> Result<()> {
    let text = escape_text(text);
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::Stdout(err)),
        _ => Ok(()),
    }
}

/// Writes `value` as pretty JSON and a newline to stdout.
fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|err| Error::Stdout(std::io::Error::other(err)))?;
    print_text(&format!("{}\n", escape_json(&text)))
}

/// The request's state, `Unspecified` for values this client does not know.
pub fn state(request: &AccessRequest) -> State {
    State::try_from(request.state).unwrap_or(State::Unspecified)
}

/// The contract's name for a state.
fn state_name(state: State) -> &'static str {
    match state {
        State::Pending => "pending",
        State::Issued => "issued",
        State::Denied => "denied",
        State::Cancelled => "cancelled",
        State::Expired => "expired",
        State::Unspecified => "unknown",
    }
}

/// The contract's name for a review decision.
fn decision_name(decision: i32) -> &'static str {
    match Decision::try_from(decision) {
        Ok(Decision::Approve) => "approve",
        Ok(Decision::Deny) => "deny",
        _ => "unknown",
    }
}

/// How many approvals the request has.
fn approvals(request: &AccessRequest) -> usize {
    request
        .reviews
        .iter()
        .filter(|r| r.decision == Decision::Approve as i32)
        .count()
}

/// Unix seconds as RFC 3339 UTC (`2025-01-02T03:04:05Z`).
pub fn rfc3339(unix: i64) -> String {
    let secs = u64::try_from(unix).unwrap_or(0);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// A number of seconds the way people write them (`30m`, `1h 30m`).
fn human_secs(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_owned()
    } else {
        items.join(", ")
    }
}

/// The human form of one request, for `moshca status`.
fn describe(r: &AccessRequest) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("request", r.id.clone()),
        ("state", {
            let s = state(r);
            if s == State::Pending {
                format!(
                    "pending ({} of {} approvals)",
                    approvals(r),
                    r.approvals_required
                )
            } else {
                state_name(s).to_owned()
            }
        }),
    ];
    if r.break_glass {
        rows.push(("break-glass", glass_note(r)));
    }
    rows.extend([
        ("requester", r.requester.clone()),
        ("role", r.role.clone()),
        ("principals", r.principals.join(",")),
        ("ttl", human_secs(r.ttl_secs)),
        ("reason", r.reason.clone()),
        ("key", r.fingerprint.clone()),
        ("created", rfc3339(r.created_at)),
    ]);
    if state(r) == State::Pending {
        rows.push(("expires", rfc3339(r.expires_at)));
    }
    rows.push(("approvers", list_or_none(&r.approvers)));
    for review in &r.reviews {
        let verb = match decision_name(review.decision) {
            "approve" => "approved",
            "deny" => "denied",
            other => other,
        };
        let comment = if review.comment.is_empty() {
            String::new()
        } else {
            format!(": {}", review.comment)
        };
        rows.push((
            "review",
            format!(
                "{} {verb} at {}{comment}",
                review.approver,
                rfc3339(review.at)
            ),
        ));
    }
    if r.serial != 0 {
        rows.push(("serial", r.serial.to_string()));
    }
    if r.valid_before != 0 {
        rows.push(("valid until", rfc3339(r.valid_before)));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    rows.iter()
        .map(|(k, v)| format!("{:<width$} {v}\n", format!("{k}:")))
        .collect()
}

/// `BREAK-GLASS, reviewed by B at T: C`, or what to run while it is not reviewed.
fn glass_note(r: &AccessRequest) -> String {
    match &r.break_glass_review {
        Some(review) => format!(
            "BREAK-GLASS, reviewed by {} at {}: {}",
            review.approver,
            rfc3339(review.at),
            review.comment
        ),
        None => format!(
            "BREAK-GLASS, not reviewed yet (moshca review {} --comment TEXT)",
            r.id
        ),
    }
}

/// The human form of a list of requests, for `moshca requests`.
fn table(requests: &[AccessRequest]) -> String {
    let mut rows = vec![[
        "ID".to_owned(),
        "STATE".to_owned(),
        "REQUESTER".to_owned(),
        "ROLE".to_owned(),
        "PRINCIPALS".to_owned(),
        "TTL".to_owned(),
        "CREATED".to_owned(),
        "REASON".to_owned(),
    ]];
    for r in requests {
        let mut state_cell = state_name(state(r)).to_owned();
        if r.break_glass {
            state_cell.push_str(" BREAK-GLASS");
        }
        rows.push([
            r.id.clone(),
            state_cell,
            r.requester.clone(),
            r.role.clone(),
            r.principals.join(","),
            human_secs(r.ttl_secs),
            rfc3339(r.created_at),
            r.reason.clone(),
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    // The header has no request; each request row is followed by its break-glass note.
    let requests = std::iter::once(None).chain(requests.iter().map(Some));
    for (row, r) in rows.iter().zip(requests) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
        if let Some(r) = r.filter(|r| r.break_glass) {
            text.push_str(&format!("    {}\n", glass_note(r)));
        }
    }
    text
}

/// The human form of audit events: `TIME  ACTOR  ACTION  REQUEST  DETAILS`, one line each,
/// columns aligned; `-` for no request, details as compact JSON.
fn audit_lines(events: &[AuditEvent]) -> String {
    let rows: Vec<[String; 5]> = events
        .iter()
        .map(|e| {
            let details = match details(&e.details_json) {
                serde_json::Value::String(raw) => crate::error::one_line(&raw),
                value => value.to_string(),
            };
            [
                rfc3339(e.at),
                e.actor.clone(),
                e.action.clone(),
                if e.request_id.is_empty() {
                    "-".to_owned()
                } else {
                    e.request_id.clone()
                },
                details,
            ]
        })
        .collect();
    let mut widths = [0usize; 4];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (cell, width) in row.iter().zip(widths) {
                line.push_str(&format!("{cell:<width$}  "));
            }
            line.push_str(&row[4]);
            format!("{}\n", line.trim_end())
        })
        .collect()
}

/// An event's details as JSON; text the server sent that is not JSON stays a string, so
/// the auditor still sees it.
fn details(json: &str) -> serde_json::Value {
    serde_json::from_str(json).unwrap_or_else(|_| serde_json::Value::String(json.to_owned()))
}

/// The JSON form of an audit event (see the contract).
#[derive(Debug, Serialize)]
pub struct AuditEventView<'a> {
    #[serde(serialize_with = "wide::one")]
    seq: u64,
    at: i64,
    at_rfc3339: String,
    actor: &'a str,
    action: &'a str,
    request_id: Option<&'a str>,
    details: serde_json::Value,
    hash: &'a str,
}

impl<'a> From<&'a AuditEvent> for AuditEventView<'a> {
    fn from(e: &'a AuditEvent) -> Self {
        AuditEventView {
            seq: e.seq,
            at: e.at,
            at_rfc3339: rfc3339(e.at),
            actor: &e.actor,
            action: &e.action,
            request_id: (!e.request_id.is_empty()).then_some(e.request_id.as_str()),
            details: details(&e.details_json),
            hash: &e.hash,
        }
    }
}

/// The JSON form of a request (see the contract).
#[derive(Debug, Serialize)]
pub struct RequestView<'a> {
    id: &'a str,
    requester: &'a str,
    role: &'a str,
    principals: &'a [String],
    ttl_secs: u64,
    reason: &'a str,
    fingerprint: &'a str,
    state: &'static str,
    created_at: i64,
    created_at_rfc3339: String,
    expires_at: i64,
    expires_at_rfc3339: String,
    approvers: &'a [String],
    approvals_required: u32,
    reviews: Vec<ReviewView<'a>>,
    #[serde(serialize_with = "wide::opt")]
    serial: Option<u64>,
    valid_before: Option<i64>,
    valid_before_rfc3339: Option<String>,
    certificate: Option<CertificateView<'a>>,
    break_glass: bool,
    break_glass_review: Option<GlassReviewView<'a>>,
}

/// The JSON form of a break-glass request's after-the-fact review.
#[derive(Debug, Serialize)]
struct GlassReviewView<'a> {
    approver: &'a str,
    comment: &'a str,
    at: i64,
    at_rfc3339: String,
}

/// The JSON form of a review.
#[derive(Debug, Serialize)]
struct ReviewView<'a> {
    approver: &'a str,
    decision: &'static str,
    comment: &'a str,
    at: i64,
    at_rfc3339: String,
}

/// The JSON form of a certificate.
#[derive(Debug, Serialize)]
struct CertificateView<'a> {
    openssh: &'a str,
    #[serde(serialize_with = "wide::one")]
    serial: u64,
    key_id: &'a str,
    principals: &'a [String],
    valid_after: i64,
    valid_after_rfc3339: String,
    valid_before: i64,
    valid_before_rfc3339: String,
}

impl<'a> From<&'a AccessRequest> for RequestView<'a> {
    fn from(r: &'a AccessRequest) -> Self {
        RequestView {
            id: &r.id,
            requester: &r.requester,
            role: &r.role,
            principals: &r.principals,
            ttl_secs: r.ttl_secs,
            reason: &r.reason,
            fingerprint: &r.fingerprint,
            state: state_name(state(r)),
            created_at: r.created_at,
            created_at_rfc3339: rfc3339(r.created_at),
            expires_at: r.expires_at,
            expires_at_rfc3339: rfc3339(r.expires_at),
            approvers: &r.approvers,
            approvals_required: r.approvals_required,
            reviews: r
                .reviews
                .iter()
                .map(|v| ReviewView {
                    approver: &v.approver,
                    decision: decision_name(v.decision),
                    comment: &v.comment,
                    at: v.at,
                    at_rfc3339: rfc3339(v.at),
                })
                .collect(),
            serial: (r.serial != 0).then_some(r.serial),
            valid_before: (r.valid_before != 0).then_some(r.valid_before),
            valid_before_rfc3339: (r.valid_before != 0).then(|| rfc3339(r.valid_before)),
            certificate: r.certificate.as_ref().map(|c| CertificateView {
                openssh: &c.openssh,
                serial: c.serial,
                key_id: &c.key_id,
                principals: &c.principals,
                valid_after: c.valid_after,
                valid_after_rfc3339: rfc3339(c.valid_after),
                valid_before: c.valid_before,
                valid_before_rfc3339: rfc3339(c.valid_before),
            }),
            break_glass: r.break_glass,
            break_glass_review: r.break_glass_review.as_ref().map(|v| GlassReviewView {
                approver: &v.approver,
                comment: &v.comment,
                at: v.at,
                at_rfc3339: rfc3339(v.at),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moshca_proto::v1::{Certificate, Review};
    use serde_json::{Value, json};

    const NOW: i64 = 1_750_000_000;

    #[test]
    fn hidden_characters_are_never_printed_raw() {
        let reason = "INC-1 \u{202E}txt.exe\u{200B} \u{1B}[31m \u{E0041}";
        let text = escape_text(reason);
        assert!(!text.chars().any(hidden), "{text:?}");
        assert!(text.contains("\\u{202e}"), "{text}");
        assert_eq!(escape_text("two\n\tlines"), "two\n\tlines");
        let json = serde_json::to_string(&serde_json::json!({ "reason": reason })).unwrap();
        let escaped = escape_json(&json);
        assert!(!escaped.chars().any(hidden), "{escaped}");
        let back: serde_json::Value = serde_json::from_str(&escaped).unwrap();
        assert_eq!(back["reason"], reason, "the value is unchanged");
    }
    /// Above 2^53: a double would round it.
    const WIDE_SERIAL: u64 = 18_446_744_073_709_551_557;

    fn pending() -> AccessRequest {
        AccessRequest {
            id: "01JREQ".into(),
            requester: "alice".into(),
            role: "db-oncall".into(),
            principals: vec!["postgres".into(), "ubuntu".into()],
            ttl_secs: 1800,
            reason: "INC-4312 replica lag".into(),
            fingerprint: "SHA256:abc".into(),
            state: State::Pending as i32,
            reviews: vec![],
            created_at: NOW,
            expires_at: NOW + 3600,
            approvers: vec!["group:sre-leads".into()],
            approvals_required: 1,
            certificate: None,
            serial: 0,
            valid_before: 0,
            break_glass: false,
            break_glass_review: None,
            notified: vec![],
            revoked: false,
        }
    }

    fn issued() -> AccessRequest {
        AccessRequest {
            state: State::Issued as i32,
            reviews: vec![Review {
                approver: "bob".into(),
                decision: Decision::Approve as i32,
                comment: "ok".into(),
                at: NOW + 60,
            }],
            certificate: Some(Certificate {
                openssh: "ssh-ed25519-cert-v01@openssh.com AAAA".into(),
                serial: WIDE_SERIAL,
                key_id: "moshca:req=01JREQ".into(),
                principals: vec!["postgres".into(), "ubuntu".into()],
                valid_after: NOW,
                valid_before: NOW + 1860,
            }),
            serial: WIDE_SERIAL,
            valid_before: NOW + 1860,
            ..pending()
        }
    }

    #[test]
    fn pending_request_json_has_every_field_and_nulls() {
        let value = serde_json::to_value(RequestView::from(&pending())).unwrap();
        assert_eq!(
            value,
            json!({
                "id": "01JREQ",
                "requester": "alice",
                "role": "db-oncall",
                "principals": ["postgres", "ubuntu"],
                "ttl_secs": 1800,
                "reason": "INC-4312 replica lag",
                "fingerprint": "SHA256:abc",
                "state": "pending",
                "created_at": NOW,
                "created_at_rfc3339": "2025-06-15T15:06:40Z",
                "expires_at": NOW + 3600,
                "expires_at_rfc3339": "2025-06-15T16:06:40Z",
                "approvers": ["group:sre-leads"],
                "approvals_required": 1,
                "reviews": [],
                "serial": null,
                "valid_before": null,
                "valid_before_rfc3339": null,
                "certificate": null,
                "break_glass": false,
                "break_glass_review": null,
            })
        );
    }

    #[test]
    fn issued_request_json_carries_reviews_and_certificate() {
        let value = serde_json::to_value(RequestView::from(&issued())).unwrap();
        assert_eq!(value["state"], "issued");
        assert_eq!(value["serial"], WIDE_SERIAL.to_string());
        assert_eq!(value["valid_before"], NOW + 1860);
        assert_eq!(
            value["reviews"],
            json!([{
                "approver": "bob",
                "decision": "approve",
                "comment": "ok",
                "at": NOW + 60,
                "at_rfc3339": "2025-06-15T15:07:40Z",
            }])
        );
        let cert = &value["certificate"];
        assert_eq!(cert["serial"], WIDE_SERIAL.to_string());
        assert_eq!(cert["key_id"], "moshca:req=01JREQ");
        assert_eq!(cert["principals"], json!(["postgres", "ubuntu"]));
        assert_eq!(cert["valid_after"], NOW);
        assert_eq!(cert["valid_before"], NOW + 1860);
        assert_eq!(cert["valid_before_rfc3339"], "2025-06-15T15:37:40Z");
        assert_eq!(cert["valid_after_rfc3339"], "2025-06-15T15:06:40Z");
        assert_eq!(value["valid_before_rfc3339"], "2025-06-15T15:37:40Z");
        assert!(
            cert["openssh"]
                .as_str()
                .unwrap()
                .starts_with("ssh-ed25519-cert")
        );
    }

    #[test]
    fn every_state_has_its_contract_name() {
        let names: Vec<Value> = [
            State::Pending,
            State::Issued,
            State::Denied,
            State::Cancelled,
            State::Expired,
        ]
        .into_iter()
        .map(|s| {
            let r = AccessRequest {
                state: s as i32,
                ..pending()
            };
            serde_json::to_value(RequestView::from(&r)).unwrap()["state"].clone()
        })
        .collect();
        assert_eq!(
            names,
            ["pending", "issued", "denied", "cancelled", "expired"].map(Value::from)
        );
        let deny = Review {
            decision: Decision::Deny as i32,
            ..Review::default()
        };
        let r = AccessRequest {
            reviews: vec![deny],
            ..pending()
        };
        let value = serde_json::to_value(RequestView::from(&r)).unwrap();
        assert_eq!(value["reviews"][0]["decision"], "deny");
    }

    #[test]
    fn login_line_follows_the_contract() {
        let line = logged_in_line(&issued(), (NOW + 1800) as u64, NOW);
        assert_eq!(
            line,
            "certificate for request 01JREQ added to ssh-agent: principals postgres,ubuntu; \
             valid until 2025-06-15T15:36:40Z (30m)"
        );
    }

    #[test]
    fn ci_lines_follow_the_contract() {
        let files = IdentityFiles {
            key: "/run/m/id_ed25519".into(),
            certificate: "/run/m/id_ed25519-cert.pub".into(),
        };
        assert_eq!(
            ci_files_lines(&issued(), (NOW + 300) as u64, NOW, &files),
            "certificate for request 01JREQ: principals postgres,ubuntu; valid until \
             2025-06-15T15:11:40Z (5m)\nssh -i /run/m/id_ed25519 -o \
             CertificateFile=/run/m/id_ed25519-cert.pub USER@HOST\n"
        );
    }

    #[test]
    fn status_text_shows_what_an_approver_needs() {
        let text = describe(&pending());
        for needle in [
            "01JREQ",
            "pending (0 of 1 approvals)",
            "alice",
            "db-oncall",
            "postgres,ubuntu",
            "30m",
            "INC-4312 replica lag",
            "SHA256:abc",
            "group:sre-leads",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        let text = describe(&issued());
        assert!(
            text.contains("bob approved at 2025-06-15T15:07:40Z: ok"),
            "{text}"
        );
        assert!(
            text.contains("serial:") && text.contains(&WIDE_SERIAL.to_string()),
            "{text}"
        );
    }

    #[test]
    fn table_aligns_columns() {
        let text = table(&[pending(), issued()]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID "));
        let col = lines[0].find("STATE").unwrap();
        assert_eq!(&lines[1][col..col + 7], "pending");
        assert_eq!(&lines[2][col..col + 6], "issued");
        assert!(lines[1].ends_with("INC-4312 replica lag"));
    }

    #[test]
    fn revoke_lines_follow_the_contract() {
        let revoked = RevokeCertificatesResponse {
            serials: vec![42, 7],
            krl_version: 3,
        };
        assert_eq!(
            revoked_line(&revoked),
            "revoked 2 certificate(s): 42, 7; KRL version 3"
        );
        let nothing = RevokeCertificatesResponse {
            serials: vec![],
            krl_version: 3,
        };
        assert_eq!(
            revoked_line(&nothing),
            "nothing newly revoked (already revoked or expired); KRL version 3"
        );
    }

    #[test]
    fn host_sync_prints_a_line_per_installed_file() {
        let failure = Error::BadResponse("x".into());
        let mut report = SyncReport {
            ca_keys_path: Path::new("/etc/ssh/moshca_ca.pub"),
            ca_keys: Ok(2),
            krl_path: Path::new("/etc/ssh/moshca.krl"),
            krl: Ok((5, 120)),
            ca_keys_changed: true,
            krl_changed: true,
        };
        assert_eq!(
            host_sync_lines(&report),
            "/etc/ssh/moshca_ca.pub: 2 key(s)\n/etc/ssh/moshca.krl: version 5, 120 bytes\n"
        );
        report.ca_keys = Err(&failure);
        assert_eq!(
            host_sync_lines(&report),
            "/etc/ssh/moshca.krl: version 5, 120 bytes\n"
        );
    }

    #[test]
    fn host_sync_is_quiet_when_nothing_changed() {
        let report = SyncReport {
            ca_keys_path: Path::new("/etc/ssh/moshca_ca.pub"),
            ca_keys: Ok(2),
            krl_path: Path::new("/etc/ssh/moshca.krl"),
            krl: Ok((5, 120)),
            ca_keys_changed: false,
            krl_changed: false,
        };
        assert_eq!(host_sync_lines(&report), "");
        let krl_only = SyncReport {
            krl_changed: true,
            ..report
        };
        assert_eq!(
            host_sync_lines(&krl_only),
            "/etc/ssh/moshca.krl: version 5, 120 bytes\n"
        );
    }

    fn break_glass() -> AccessRequest {
        AccessRequest {
            id: "01JGLASS".into(),
            reviews: vec![],
            ttl_secs: 900,
            break_glass: true,
            ..issued()
        }
    }

    fn glass_reviewed() -> AccessRequest {
        AccessRequest {
            break_glass_review: Some(Review {
                approver: "bob".into(),
                decision: Decision::Unspecified as i32,
                comment: "INC-4312 was real".into(),
                at: NOW + 600,
            }),
            ..break_glass()
        }
    }

    #[test]
    fn break_glass_json_carries_the_flag_and_the_review() {
        let value = serde_json::to_value(RequestView::from(&break_glass())).unwrap();
        assert_eq!(value["break_glass"], true);
        assert_eq!(value["break_glass_review"], Value::Null);
        let value = serde_json::to_value(RequestView::from(&glass_reviewed())).unwrap();
        assert_eq!(value["break_glass"], true);
        assert_eq!(
            value["break_glass_review"],
            json!({
                "approver": "bob",
                "comment": "INC-4312 was real",
                "at": NOW + 600,
                "at_rfc3339": "2025-06-15T15:16:40Z",
            })
        );
        let value = serde_json::to_value(RequestView::from(&issued())).unwrap();
        assert_eq!(value["break_glass"], false);
    }

    #[test]
    fn status_text_flags_break_glass_and_shows_its_review() {
        let text = describe(&break_glass());
        assert!(
            text.contains(
                "break-glass: BREAK-GLASS, not reviewed yet (moshca review 01JGLASS --comment TEXT)"
            ),
            "{text}"
        );
        let text = describe(&glass_reviewed());
        assert!(
            text.contains(
                "break-glass: BREAK-GLASS, reviewed by bob at 2025-06-15T15:16:40Z: INC-4312 was real"
            ),
            "{text}"
        );
        assert!(!describe(&issued()).contains("BREAK-GLASS"));
    }

    #[test]
    fn table_marks_break_glass_rows_and_notes_their_review() {
        let text = table(&[pending(), break_glass(), glass_reviewed()]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        let col = lines[0].find("STATE").unwrap();
        assert_eq!(&lines[1][col..col + 8], "pending ");
        assert_eq!(&lines[2][col..col + 18], "issued BREAK-GLASS");
        assert_eq!(
            lines[3],
            "    BREAK-GLASS, not reviewed yet (moshca review 01JGLASS --comment TEXT)"
        );
        assert_eq!(&lines[4][col..col + 18], "issued BREAK-GLASS");
        assert_eq!(
            lines[5],
            "    BREAK-GLASS, reviewed by bob at 2025-06-15T15:16:40Z: INC-4312 was real"
        );
    }

    #[test]
    fn break_glass_line_follows_the_contract() {
        assert_eq!(
            break_glass_line(&break_glass()),
            "BREAK-GLASS access granted; no webhook was notified; request 01JGLASS stays \
             flagged until reviewed"
        );
        let told = AccessRequest {
            notified: vec!["oncall-slack".into(), "audit-sink".into()],
            ..break_glass()
        };
        assert_eq!(
            break_glass_line(&told),
            "BREAK-GLASS access granted; notified: oncall-slack, audit-sink; request 01JGLASS \
             stays flagged until reviewed"
        );
        assert!(NOBODY_NOTIFIED.contains("nobody was notified"));
    }

    #[test]
    fn approver_comments_reach_the_requester() {
        assert_eq!(approval_lines(&issued()), ["approved by bob: ok"]);
        assert!(approval_lines(&pending()).is_empty());
    }

    #[test]
    fn errors_in_json_have_error_hint_and_exit() {
        let err = Error::MissingToken;
        assert_eq!(
            error_view(&err.to_string(), err.hint(), err.exit_code()),
            json!({
                "error": "no bearer token configured",
                "hint": err.hint().unwrap(),
                "exit": 1,
            })
        );
        assert_eq!(
            error_view("x", None, 2),
            json!({"error": "x", "hint": null, "exit": 2})
        );
    }

    #[test]
    fn live_certificates_are_a_table_with_the_agent_column() {
        let issued = issued();
        let text = live_table(
            &[LiveCertificate {
                request: &issued,
                in_agent: Some(true),
            }],
            NOW + 60,
        );
        assert_eq!(
            text,
            format!(
                "REQUEST  ROLE       PRINCIPALS       SERIAL                VALID UNTIL                      IN AGENT\n\
                 01JREQ   db-oncall  postgres,ubuntu  {WIDE_SERIAL}  2025-06-15T15:37:40Z (30m left)  yes\n"
            )
        );
    }

    fn event(seq: u64, actor: &str, action: &str, request_id: &str, details: &str) -> AuditEvent {
        AuditEvent {
            seq,
            at: NOW + seq as i64,
            actor: actor.into(),
            action: action.into(),
            request_id: request_id.into(),
            details_json: details.into(),
            hash: format!("{seq:064x}"),
        }
    }

    #[test]
    fn audit_json_has_every_field_with_parsed_details() {
        let events = [
            event(
                7,
                "alice",
                "request.break_glass",
                "01JGLASS",
                r#"{"role":"db-oncall","ttl_secs":900}"#,
            ),
            event(8, "moshca-server", "policy.reloaded", "", "{}"),
            event(9, "bob", "odd", "", "not json"),
        ];
        let views: Vec<AuditEventView<'_>> = events.iter().map(AuditEventView::from).collect();
        assert_eq!(
            serde_json::to_value(&views).unwrap(),
            json!([
                {
                    "seq": "7",
                    "at": NOW + 7,
                    "at_rfc3339": "2025-06-15T15:06:47Z",
                    "actor": "alice",
                    "action": "request.break_glass",
                    "request_id": "01JGLASS",
                    "details": {"role": "db-oncall", "ttl_secs": 900},
                    "hash": format!("{:064x}", 7),
                },
                {
                    "seq": "8",
                    "at": NOW + 8,
                    "at_rfc3339": "2025-06-15T15:06:48Z",
                    "actor": "moshca-server",
                    "action": "policy.reloaded",
                    "request_id": null,
                    "details": {},
                    "hash": format!("{:064x}", 8),
                },
                {
                    "seq": "9",
                    "at": NOW + 9,
                    "at_rfc3339": "2025-06-15T15:06:49Z",
                    "actor": "bob",
                    "action": "odd",
                    "request_id": null,
                    "details": "not json",
                    "hash": format!("{:064x}", 9),
                },
            ])
        );
    }

    #[test]
    fn audit_text_is_one_aligned_line_per_event() {
        let events = [
            event(
                1,
                "alice",
                "request.break_glass",
                "01JGLASS",
                r#"{"reason": "INC-1\nline two"}"#,
            ),
            event(2, "moshca-server", "policy.reloaded", "", "{}"),
            event(3, "bob", "odd", "", "not\njson"),
        ];
        assert_eq!(
            audit_lines(&events),
            "2025-06-15T15:06:41Z  alice          request.break_glass  01JGLASS  \
             {\"reason\":\"INC-1\\nline two\"}\n\
             2025-06-15T15:06:42Z  moshca-server  policy.reloaded      -         {}\n\
             2025-06-15T15:06:43Z  bob            odd                  -         not json\n"
        );
    }
}
