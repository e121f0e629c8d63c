//! A running federation changes: a partner enrols from its own keys, a partner rotates
//! its keys, the policy gets a new version, a rollback is refused and a partner is
//! revoked — all while the broker and the other agents keep running (real processes).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use chrono::Utc;
use ketenpost_broker::audit::{AuditEvent, Outcome};
use ketenpost_certs::lifecycle;
use ketenpost_schemas::directory::EnrolmentRequest;
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::policy::Role;
use ketenpost_tests::agents::{
    reactie_payload, seed_policy, AgentProcess, AgentSpec, AuditLog, Outgoing, WAIT,
};
use ketenpost_tests::{BrokerProcess, Fed};
use serde_json::json;

/// The broker re-reads its documents every second here; agents refresh every second.
const RELOAD: &str = "1";
/// How long a reload may take to show (the interval plus a margin for a loaded machine).
const RELOADED: Duration = Duration::from_secs(20);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn index_of(fed: &Fed, role: &str) -> Result<usize> {
    fed.files
        .parties
        .iter()
        .position(|p| p.roles.contains(&Role::new(role)))
        .ok_or_else(|| anyhow!("no party with role {role}"))
}

fn spec(fed: &Fed, role: &str) -> Result<AgentSpec> {
    let mut s = AgentSpec::of(fed, index_of(fed, role)?)?;
    s.documents_refresh_secs = 1;
    Ok(s)
}

fn broker(fed: &Fed) -> Result<BrokerProcess> {
    BrokerProcess::start_with(
        fed,
        &fed.path("broker"),
        "127.0.0.1:0".parse()?,
        &[
            "--documents-reload-secs",
            RELOAD,
            "--metrics",
            "127.0.0.1:0",
        ],
        &[],
    )
}

/// `ketenpost-agent keygen` in `dir`: the partner's request and CSR.
fn keygen(dir: &Path, oin: &Oin, name: &str) -> Result<(EnrolmentRequest, String)> {
    let g = ketenpost_agent::keygen::keygen(dir, oin, name, "fg@partner.example")?;
    Ok((g.request, std::fs::read_to_string(dir.join("tls.csr"))?))
}

/// The identity of a partner whose keys `keygen` made in `dir`, with the certificate the
/// federation issued at `cert`.
fn spec_from_keygen(dir: &Path, cert: &Path, oin: &Oin, name: &str, role: &str) -> AgentSpec {
    AgentSpec {
        oin: oin.clone(),
        name: name.to_owned(),
        roles: vec![Role::new(role)],
        cert: cert.to_owned(),
        key: dir.join("tls.key"),
        signing_key: dir.join("signing.key"),
        age_key: dir.join("age.key"),
        previous_age: Vec::new(),
        documents_refresh_secs: 1,
    }
}

/// Retry an API call until it succeeds (an agent learns a new directory within its
/// refresh interval).
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let until = std::time::Instant::now() + RELOADED;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if std::time::Instant::now() >= until => {
                return Err(e.context(format!("{what}: still failing after {RELOADED:?}")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// A partner that made its own keys enrols into the running federation: the broker puts
/// the new directory in force without a restart, the partner's agent connects, and it
/// exchanges a signal and an answer with a partner that was there before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_enrols_from_its_own_csr_and_exchanges_messages_without_a_restart() -> Result<()>
{
    let _one_at_a_time = SERIAL.lock().await;
    let fed = Fed::new(&seed_policy("flevoland")?, None)?;
    let broker = broker(&fed)?;
    let zorg = AgentProcess::start_spec(
        &spec(&fed, "zorgaanbieder")?,
        &fed,
        broker.addr,
        &fed.path("zorg"),
    )?;
    let gemeente = fed.files.parties[index_of(&fed, "gemeente")?].oin.clone();

    // The new corporation makes its keys; only the request and the CSR leave it.
    let oin: Oin = "00000009000000000042".parse()?;
    let name = "Woonstichting Nieuw";
    let keys = fed.path("nieuw-keys");
    let (request, csr) = keygen(&keys, &oin, name)?;
    let issued = lifecycle::enrol(
        &fed.files,
        &request,
        &csr,
        &[Role::new("woningcorporatie")],
        Utc::now(),
    )?;
    ensure!(
        issued.serial == 2,
        "enrolment made serial {}",
        issued.serial
    );
    let cert = keys.join("tls.crt");
    std::fs::write(&cert, &issued.cert_pem)?;
    broker.wait_for_serial(2, RELOADED)?;

    let corp = AgentProcess::start_spec(
        &spec_from_keygen(&keys, &cert, &oin, name, "woningcorporatie"),
        &fed,
        broker.addr,
        &fed.path("nieuw"),
    )?;
    // The care provider's agent learns the new partner from the broker's documents.
    let members = [&corp.oin, &gemeente];
    let case = eventually("open a case with the new partner", || {
        zorg.open_case("uitstroom", &members)
    })
    .await?;
    let consent = zorg
        .grant_consent(
            &case,
            &["zorgaanbieder", "woningcorporatie", "gemeente"],
            "toestemming uitstromer",
        )
        .await?;
    let signal = corp
        .send(&Outgoing::uitstroom_signaal(
            &case,
            "geluidsoverlast",
            &zorg.oin,
            &consent,
        )?)
        .await?;
    let got = zorg.wait_for_message(&signal, WAIT).await?;
    ensure!(got["sender"] == json!(corp.oin), "{got}");
    let answer = zorg
        .send(
            &Outgoing::new("reactie", &case, reactie_payload()?)
                .to(&corp.oin)
                .in_reply_to(&signal),
        )
        .await?;
    corp.wait_for_message(&answer, WAIT).await?;
    corp.wait_for_status(&signal, "delivered", WAIT).await?;
    drop((corp, zorg));
    broker.terminate()?;
    let audit = AuditLog::read(&fed, &fed.path("broker"))?;
    let changed = audit.of(AuditEvent::DocumentsChanged);
    ensure!(
        changed
            .iter()
            .any(|r| r.outcome == Outcome::Ok && r.document_serial == Some(2)),
        "no documents_changed record for serial 2: {changed:?}"
    );
    Ok(())
}

/// Rotation, a policy change, a refused rollback and a revocation in one running
/// federation:
/// - a signal the corporation signed with its old key before the rotation is delivered
///   after it, and one signed with the new key is delivered too;
/// - a policy version that lets the municipality send signals takes effect at the broker
///   and the agents without a restart; putting the older files back is refused;
/// - the revoked municipality is cut off while the others continue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_policy_change_rollback_and_revocation_apply_live() -> Result<()> {
    let _one_at_a_time = SERIAL.lock().await;
    let policy_v1 = seed_policy("flevoland")?;
    let fed = Fed::new(&policy_v1, None)?;
    let broker = broker(&fed)?;
    let zorg_spec = spec(&fed, "zorgaanbieder")?;
    let corp_spec = spec(&fed, "woningcorporatie")?;
    let gem_spec = spec(&fed, "gemeente")?;
    let mut zorg = AgentProcess::start_spec(&zorg_spec, &fed, broker.addr, &fed.path("zorg"))?;
    let corp = AgentProcess::start_spec(&corp_spec, &fed, broker.addr, &fed.path("corp"))?;
    let gem = AgentProcess::start_spec(&gem_spec, &fed, broker.addr, &fed.path("gem"))?;
    let case = zorg.open_case("uitstroom", &[&corp.oin, &gem.oin]).await?;
    let consent = zorg
        .grant_consent(
            &case,
            &["zorgaanbieder", "woningcorporatie", "gemeente"],
            "toestemming uitstromer",
        )
        .await?;
    let signal =
        |category: &str| Outgoing::uitstroom_signaal(&case, category, &zorg_spec.oin, &consent);

    // 1. Rotation. The care provider is away; the corporation signs a signal with its old
    // key, and the broker queues it.
    zorg.terminate()?;
    let old_signed = corp.send(&signal("geluidsoverlast")?).await?;
    corp.wait_for_status(&old_signed, "accepted", WAIT).await?;
    corp.terminate()?;
    let new_keys = fed.path("corp-rotated");
    let (request, csr) = keygen(&new_keys, &corp_spec.oin, &corp_spec.name)?;
    let issued = lifecycle::rotate(
        &fed.files,
        &request,
        &csr,
        chrono::Duration::hours(72),
        Utc::now(),
    )?;
    let cert = new_keys.join("tls.crt");
    std::fs::write(&cert, &issued.cert_pem)?;
    broker.wait_for_serial(issued.serial, RELOADED)?;
    let mut rotated = spec_from_keygen(
        &new_keys,
        &cert,
        &corp_spec.oin,
        &corp_spec.name,
        "woningcorporatie",
    );
    rotated.previous_age = vec![corp_spec.age_key.clone()];
    // The corporation runs on its new keys, in the same data folder.
    let corp = AgentProcess::start_spec(&rotated, &fed, broker.addr, &fed.path("corp"))?;
    let new_signed = corp.send(&signal("vervuiling")?).await?;
    zorg = AgentProcess::start_spec(&zorg_spec, &fed, broker.addr, &fed.path("zorg"))?;
    for id in [&old_signed, &new_signed] {
        let got = zorg.wait_for_message(id, WAIT).await?;
        ensure!(got["sender"] == json!(corp.oin), "{got}");
    }
    // The answer is sealed for the corporation's new age key.
    let answer = zorg
        .send(
            &Outgoing::new("reactie", &case, reactie_payload()?)
                .to(&corp.oin)
                .in_reply_to(&new_signed),
        )
        .await?;
    corp.wait_for_message(&answer, WAIT).await?;

    // 2. A policy change: municipalities may now send signals too.
    let before = gem
        .send_refused(&signal("geluidsoverlast")?, WAIT)
        .await
        .context("the municipality's signal under policy version 1")?;
    ensure!(before == "sender_role_not_allowed", "refused as {before}");
    let saved = |p: &Path| std::fs::read(p).unwrap();
    let old_files = [
        (fed.files.policy.file.clone(), saved(&fed.files.policy.file)),
        (fed.files.policy.sig.clone(), saved(&fed.files.policy.sig)),
        (
            fed.files.directory.file.clone(),
            saved(&fed.files.directory.file),
        ),
        (
            fed.files.directory.sig.clone(),
            saved(&fed.files.directory.sig),
        ),
    ];
    let policy_v2 = policy_v1.replacen(
        "senders = [\"woningcorporatie\", \"zorgaanbieder\"]",
        "senders = [\"woningcorporatie\", \"zorgaanbieder\", \"gemeente\"]",
        1,
    );
    ensure!(
        policy_v2 != policy_v1,
        "the signal senders line was not found"
    );
    let v2 = lifecycle::sign_policy(&fed.files, policy_v2.as_bytes(), Utc::now())?;
    broker.wait_for_serial(v2, RELOADED)?;
    let from_gem = eventually("the municipality's signal under the new policy", || async {
        gem.send(&signal("geluidsoverlast")?).await
    })
    .await?;
    zorg.wait_for_message(&from_gem, WAIT).await?;

    // 3. Rollback: the version-1 files come back; the broker keeps version 2 and audits
    // the refusal. Then version 2's files are put back as they were.
    let new_files: Vec<_> = old_files
        .iter()
        .map(|(path, _)| (path.clone(), saved(path)))
        .collect();
    let refused = broker
        .metric("ketenpost_broker_documents_refused_total")?
        .unwrap_or(0);
    for (path, bytes) in &old_files {
        std::fs::write(path, bytes)?;
    }
    // The broker looks at the files, refuses them and counts the refusal.
    let until = std::time::Instant::now() + WAIT;
    while broker
        .metric("ketenpost_broker_documents_refused_total")?
        .unwrap_or(0)
        == refused
    {
        ensure!(
            std::time::Instant::now() < until,
            "the broker never refused the rolled-back files"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(broker.documents_serial()? == v2, "the broker rolled back");
    for (path, bytes) in &new_files {
        std::fs::write(path, bytes)?;
    }

    // 4. Revocation: the municipality's certificate goes on the CRL and the party is
    // marked revoked in a new version. Its connection is closed; its next signal is never
    // accepted; the others continue.
    let now = Utc::now();
    ketenpost_certs::revoke::revoke_party_cert(&fed.files, &gem.oin, now)?;
    let v3 = ketenpost_certs::revoke::revoke_in_directory(&fed.files, &gem.oin, now)?;
    broker.wait_for_serial(v3, RELOADED)?;
    match gem.send(&signal("geluidsoverlast")?).await {
        Ok(id) => {
            let status = gem
                .wait_for_status(&id, "accepted", Duration::from_secs(4))
                .await;
            ensure!(status.is_err(), "a revoked party's signal was accepted");
        }
        Err(refused) => drop(refused),
    }
    let after = corp.send(&signal("vervuiling")?).await?;
    zorg.wait_for_message(&after, WAIT).await?;

    drop((corp, zorg, gem));
    broker.terminate()?;
    let audit = AuditLog::read(&fed, &fed.path("broker"))?;
    let changed: Vec<_> = audit
        .of(AuditEvent::DocumentsChanged)
        .into_iter()
        .map(|r| (r.outcome, r.reason.clone(), r.document_serial))
        .collect();
    for want in [
        (
            Outcome::Ok,
            Some("directory_version".to_owned()),
            Some(issued.serial),
        ),
        (Outcome::Ok, Some("directory_version".to_owned()), Some(v2)),
        (
            Outcome::Refused,
            Some("version_not_newer".to_owned()),
            Some(issued.serial),
        ),
        (Outcome::Ok, Some("directory_version".to_owned()), Some(v3)),
    ] {
        ensure!(changed.contains(&want), "no {want:?} among {changed:?}");
    }
    ensure!(audit.verified.is_intact(), "{:?}", audit.verified);
    Ok(())
}

/// A partner with a certificate from an external CA (a second test CA playing
/// PKIoverheid, the OIN in subject serialNumber) enrols with that certificate; the broker
/// trusts the CA through `--partner-ca` with its CRL, and the partner exchanges messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_with_an_external_ca_certificate_is_accepted() -> Result<()> {
    let _one_at_a_time = SERIAL.lock().await;
    let fed = Fed::new(&seed_policy("flevoland")?, None)?;
    let pkio = lifecycle::ExternalCa::create(
        &fed.path("pkio"),
        "Test PKIoverheid Private Services CA",
        Utc::now(),
    )?;
    let oin: Oin = "00000009000000000077".parse()?;
    let name = "Woonstichting Extern";
    let keys = fed.path("extern-keys");
    let (request, csr) = keygen(&keys, &oin, name)?;
    let cert_pem = pkio.issue(&csr, name, &oin, Utc::now())?;
    let cert = keys.join("tls.crt");
    std::fs::write(&cert, &cert_pem)?;
    let issued = lifecycle::enrol_with_certificate(
        &fed.files,
        &request,
        &cert_pem,
        &[Role::new("woningcorporatie")],
        Utc::now(),
    )?;
    ensure!(issued.serial == 2);
    // The certificate's OIN must be the request's.
    let mut other = request.clone();
    other.oin = "00000009000000000078".parse()?;
    ensure!(
        lifecycle::enrol_with_certificate(&fed.files, &other, &cert_pem, &[], Utc::now()).is_err(),
        "a certificate for another OIN was enrolled"
    );

    let ca = pkio.cert.to_string_lossy().into_owned();
    let crl = pkio.crl.to_string_lossy().into_owned();
    let broker = BrokerProcess::start_with(
        &fed,
        &fed.path("broker"),
        "127.0.0.1:0".parse()?,
        &["--partner-ca", &ca, "--crl", &crl],
        &[],
    )?;
    let zorg = AgentProcess::start_spec(
        &spec(&fed, "zorgaanbieder")?,
        &fed,
        broker.addr,
        &fed.path("zorg"),
    )?;
    let corp = AgentProcess::start_spec(
        &spec_from_keygen(&keys, &cert, &oin, name, "woningcorporatie"),
        &fed,
        broker.addr,
        &fed.path("extern"),
    )?;
    let case = zorg.open_case("uitstroom", &[&corp.oin]).await?;
    let consent = zorg
        .grant_consent(&case, &["zorgaanbieder", "woningcorporatie"], "toestemming")
        .await?;
    let signal = corp
        .send(&Outgoing::uitstroom_signaal(
            &case,
            "geluidsoverlast",
            &zorg.oin,
            &consent,
        )?)
        .await?;
    zorg.wait_for_message(&signal, WAIT).await?;
    Ok(())
}

/// Run a workspace binary; its exit success and its stdout and stderr together.
fn run(name: &str, args: &[&str]) -> Result<(bool, String)> {
    let out = std::process::Command::new(ketenpost_tests::binary(name)?)
        .args(args)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// The operator's commands as an operator types them: `ketenpost-agent keygen` at the
/// partner, then `ketenpost-certs enrol`, `rotate`, `policy sign` and `directory sign`,
/// each making the next signed version that loads; mistakes are refused with a reason.
#[test]
fn the_operator_commands_enrol_rotate_and_sign_numbered_versions() -> Result<()> {
    let fed = Fed::new(&seed_policy("flevoland")?, None)?;
    let f = fed.files.dir.to_string_lossy().into_owned();
    let p = |name: &str| fed.path(name).to_string_lossy().into_owned();
    let keygen = |dir: &str| {
        run(
            "ketenpost-agent",
            &[
                "keygen",
                "--out",
                dir,
                "--oin",
                "00000009000000000042",
                "--name",
                "Woonstichting Nieuw",
                "--fg-contact",
                "fg@nieuw.example",
            ],
        )
    };
    let (ok, said) = keygen(&p("k1"))?;
    ensure!(ok, "keygen: {said}");
    let (ok, said) = keygen(&p("k1"))?;
    ensure!(
        !ok && said.contains("never overwrites"),
        "keygen again: {said}"
    );

    let enrol = |dir: &str| {
        run(
            "ketenpost-certs",
            &[
                "enrol",
                "--federation",
                &f,
                "--request",
                &format!("{dir}/enrolment.json"),
                "--csr",
                &format!("{dir}/tls.csr"),
                "--out",
                &format!("{dir}/tls.crt"),
                "--roles",
                "woningcorporatie",
            ],
        )
    };
    let (ok, said) = enrol(&p("k1"))?;
    ensure!(ok && said.contains("directory version 2"), "enrol: {said}");
    let (ok, said) = enrol(&p("k1"))?;
    ensure!(!ok && said.contains("rotate"), "enrol twice: {said}");

    let (ok, said) = keygen(&p("k2"))?;
    ensure!(ok, "keygen for the rotation: {said}");
    let (ok, said) = run(
        "ketenpost-certs",
        &[
            "rotate",
            "--federation",
            &f,
            "--request",
            &format!("{}/enrolment.json", p("k2")),
            "--csr",
            &format!("{}/tls.csr", p("k2")),
            "--out",
            &format!("{}/tls.crt", p("k2")),
            "--overlap-hours",
            "24",
        ],
    )?;
    ensure!(ok && said.contains("directory version 3"), "rotate: {said}");
    let policy = fed.files.load_policy()?;
    let dir = fed.files.load_directory(&policy)?;
    let rotated = dir
        .party(&"00000009000000000042".parse()?)
        .context("the enrolled party")?;
    ensure!(rotated.previous_keys.len() == 1, "{rotated:?}");

    // A new policy version; one of another covenant is refused.
    let text = std::fs::read_to_string(&fed.files.policy.file)?;
    let edited = fed.path("policy-v2.toml");
    std::fs::write(&edited, text + "\n# v2\n")?;
    let (ok, said) = run(
        "ketenpost-certs",
        &[
            "policy",
            "sign",
            "--federation",
            &f,
            &edited.to_string_lossy(),
        ],
    )?;
    ensure!(ok && said.contains("version 4"), "policy sign: {said}");
    let foreign = fed.path("foreign.toml");
    std::fs::write(&foreign, seed_policy("walcheren")?)?;
    let (ok, said) = run(
        "ketenpost-certs",
        &[
            "policy",
            "sign",
            "--federation",
            &f,
            &foreign.to_string_lossy(),
        ],
    )?;
    ensure!(!ok && said.contains("covenant"), "foreign policy: {said}");
    // `policy check` names every problem, each with its line.
    let broken = fed.path("broken.toml");
    std::fs::write(
        &broken,
        seed_policy("walcheren")?
            .replacen("undelivered_ttl = \"", "undelivered_ttl = \"x", 1)
            .replacen("case_retention = \"", "case_retention = \"y", 1),
    )?;
    let (ok, said) = run(
        "ketenpost-certs",
        &["policy", "check", &broken.to_string_lossy()],
    )?;
    ensure!(
        !ok && said.contains("2 problem(s)")
            && said.matches("broken.toml: policy line ").count() == 2,
        "policy check: {said}"
    );

    // An edited directory: serial, date and policy digest are the tool's to set.
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&fed.files.directory.file)?)?;
    json["parties"][0]["fg_contact"] = json!("fg-nieuw@gemeente.example");
    json["serial"] = json!(1);
    let edited = fed.path("directory-edited.json");
    std::fs::write(&edited, serde_json::to_vec_pretty(&json)?)?;
    let (ok, said) = run(
        "ketenpost-certs",
        &[
            "directory",
            "sign",
            "--federation",
            &f,
            &edited.to_string_lossy(),
        ],
    )?;
    ensure!(ok && said.contains("version 5"), "directory sign: {said}");
    let key = fed.files.federation_public_key()?;
    let (_, dir) = ketenpost_schemas::directory::load_signed_documents(
        &key,
        (
            &std::fs::read(&fed.files.policy.file)?,
            &std::fs::read_to_string(&fed.files.policy.sig)?,
        ),
        (
            &std::fs::read(&fed.files.directory.file)?,
            &std::fs::read_to_string(&fed.files.directory.sig)?,
        ),
    )?;
    ensure!(dir.serial == 5 && dir.parties[0].fg_contact == "fg-nieuw@gemeente.example");
    Ok(())
}
