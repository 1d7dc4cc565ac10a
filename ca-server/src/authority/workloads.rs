//! CI workloads: certificates for verified OIDC tokens on auto roles, and forgetting
//! consumed token ids.

use super::*;

impl Authority {
    /// Issues a certificate to a CI workload whose token was verified: only for roles with
    /// `approval = "auto"` whose `workloads` match the token's claims. The token's `jti`
    /// is consumed in the issuing transaction, so a replay is refused even when concurrent.
    pub fn create_workload_request_at(
        &self,
        wl: &WorkloadIdentity,
        new: NewRequest,
        now: UnixTime,
    ) -> Result<RequestView> {
        let policy = self.policy();
        let name = workload_name(&wl.subject);
        let pseudo = Caller {
            name: name.clone(),
            groups: Vec::new(),
            proof: Proof::Workload,
        };
        let checked = (|| {
            let role = policy
                .role(&new.role)
                .ok_or_else(|| Error::PermissionDenied(format!("no role named {:?}", new.role)))?;
            if role.approval != policy::Approval::Auto {
                return Err(Error::PermissionDenied(format!(
                    "role {} needs manual approval; workload tokens may only use roles with approval = \"auto\"",
                    role.name
                )));
            }
            if !role
                .workloads
                .iter()
                .any(|w| w.matches(&wl.issuer, &wl.audiences, &wl.claims))
            {
                return Err(Error::PermissionDenied(format!(
                    "token claims ({}) do not match any workload of role {}",
                    claim_summary(wl),
                    role.name
                )));
            }
            let reason = if new.reason.trim().is_empty() {
                format!("workload {}", claim_summary(wl))
            } else {
                new.reason.clone()
            };
            let checked = role
                .check_request(&new.principals, new.ttl_secs, &reason)
                .map_err(|r| match r {
                    Refusal::Invalid(m) => Error::InvalidArgument(m),
                    Refusal::Denied(m) => Error::PermissionDenied(m),
                })?;
            let subject = self.subject_key(&new.public_key)?;
            Ok((role, checked, subject, reason))
        })();
        let (role, checked, subject, reason) = match checked {
            Ok(v) => v,
            Err(e) if !e.is_internal() => return Err(self.refuse(&pseudo, &new.role, e, now)),
            Err(e) => return Err(e),
        };
        let request = Request {
            id: ulid::Ulid::new().to_string(),
            requester: name.clone(),
            role: role.name.clone(),
            principals: checked.principals,
            ttl_secs: checked.ttl_secs,
            reason: reason.chars().take(policy::MAX_REASON_LEN).collect(),
            public_key: subject.to_openssh().map_err(signer::Error::from)?,
            fingerprint: subject.fingerprint(HashAlg::Sha256).to_string(),
            state: State::Pending,
            created_at: now,
            expires_at: now + policy.defaults.pending_ttl,
            decided_at: None,
            approvals_required: 0,
            reviews: Vec::new(),
            break_glass: false,
            break_glass_review: None,
            version: 0,
        };
        let extra = format!(
            ":iss={}:repo={}:run={}",
            key_id_part(&wl.issuer),
            key_id_part(
                wl.claim("repository")
                    .or(wl.claim("project_path"))
                    .unwrap_or("-")
            ),
            key_id_part(
                wl.claim("run_id")
                    .or(wl.claim("pipeline_id"))
                    .unwrap_or("-")
            ),
        );
        let ready = Ready::without_approval(request.clone());
        // Signed before the transaction, with a serial checked inside it.
        let signed = self.sign(&ready, role, &policy, now, &extra, random_serial())?;
        let result = self.store.transact(|tx| {
            if !tx.insert_jti(&wl.issuer, &wl.jti, wl.expires_at)? {
                return Err(Error::Unauthenticated(
                    "token already used (jti replay); request a fresh ID token".into(),
                ));
            }
            refuse_ca_subject(tx, &request.fingerprint)?;
            if tx.key_revoked(&request.fingerprint)? {
                return Err(Error::PermissionDenied("public key is revoked".into()));
            }
            tx.append_audit(&Event::new(
                now,
                &name,
                "request.created",
                Some(&request.id),
                {
                    let mut details = request_details(&request);
                    details["workload"] = json!({
                        "issuer": wl.issuer,
                        "subject": wl.subject,
                        "repository": wl.claim("repository"),
                        "ref": wl.claim("ref"),
                        "environment": wl.claim("environment"),
                        "run_id": wl.claim("run_id"),
                        "jti": wl.jti,
                    });
                    details
                },
            ))?;
            let (request, cert) = self.issue_presigned(tx, ready, signed)?;
            Ok(self.view(&policy, request, Some(cert), true))
        });
        match result {
            Ok(view) => {
                if let Some(cert) = &view.certificate {
                    log_issued(cert, &name);
                    crate::metrics::issued(
                        crate::metrics::role_label(&policy, &view.request.role),
                        crate::metrics::Path::Workload,
                    );
                }
                self.changed(&view.request.id);
                Ok(view)
            }
            Err(e) if !e.is_internal() => Err(self.refuse(&pseudo, &new.role, e, now)),
            Err(e) => Err(e),
        }
    }

    /// Forgets consumed token ids whose tokens expired.
    pub fn purge_jti_at(&self, now: UnixTime) -> Result<usize> {
        self.store.transact(|tx| {
            // ID tokens traded for CA sessions go at the same pace, once past any leeway.
            tx.forget_consumed_id_tokens(now.saturating_sub(crate::config::MAX_CLOCK_LEEWAY))?;
            tx.purge_jti(now, crate::oidc::LEEWAY_SECS)
                .map_err(Error::from)
        })
    }
}

/// A workload's name in requests and key ids: its `sub`, printable, at most 128 bytes.
fn workload_name(subject: &str) -> String {
    let mut name = String::from("wl:");
    name.push_str(&key_id_part(subject));
    name.chars().take(128).collect()
}

/// Makes a value safe inside a key id: printable ASCII without spaces.
fn key_id_part(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect()
}

fn claim_summary(wl: &WorkloadIdentity) -> String {
    ["repository", "ref", "environment", "sub"]
        .iter()
        .filter_map(|k| wl.claim(k).map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(", ")
}
