//! `init` end to end: a federation in a tempdir, read back and checked piece by piece.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ketenpost_certs::{
    cert_der_from_pem, fingerprint, init, oin_from_cert_der, Error, Federation, InitOptions,
};
use ketenpost_schemas::directory::{load_signed_directory, load_signed_policy};
use ketenpost_schemas::ids::Oin;
use ketenpost_schemas::keys;
use x509_parser::prelude::*;

const POLICY: &str = r#"# a minimal covenant for tests
[covenant]
id = "testkring"
name = "Testconvenant"

[roles.gemeente]
description = "municipality"
[roles.zorgaanbieder]
description = "care provider"

[purposes.uitstroom]
name = "Uitstroom"
processing_activity = "test-uitstroom"
legal_basis = "AVG art. 6(1)(a): toestemming"
case_retention = "7 years"
case_managers = ["gemeente"]
consent_recorders = ["zorgaanbieder"]

[purposes.uitstroom.kinds.aanmelding]
senders = ["zorgaanbieder"]
recipients = ["gemeente"]
consent = "required"
undelivered_ttl = "14 days"
views.gemeente = ["identity", "contact"]
"#;

fn write_policy(dir: &Path) -> PathBuf {
    let path = dir.join("input-policy.toml");
    std::fs::write(&path, POLICY).unwrap();
    path
}

/// A federation in `<tmp>/fed` from the inline policy.
fn federation() -> (tempfile::TempDir, Federation) {
    let tmp = tempfile::tempdir().unwrap();
    let policy = write_policy(tmp.path());
    let fed = init(&InitOptions::new(policy, tmp.path().join("fed"))).unwrap();
    (tmp, fed)
}

fn der_of(path: &Path) -> Vec<u8> {
    cert_der_from_pem(&std::fs::read(path).unwrap()).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn writes_every_file_and_keys_are_0600() {
    let (_tmp, fed) = federation();
    let d = &fed.dir;
    assert!(d.is_absolute());
    for rel in [
        "federation.toml",
        "federation/signing.pub",
        "ca/ca.pem",
        "ca/crl.pem",
        "broker/cert.pem",
        "policy.toml",
        "policy.toml.sig",
        "directory.json",
        "directory.json.sig",
        "negative/expired/cert.pem",
        "negative/revoked/cert.pem",
        "negative/foreign/ca.pem",
        "negative/foreign/cert.pem",
        "negative/wrong-oin/cert.pem",
    ] {
        assert!(d.join(rel).is_file(), "{rel} is missing");
    }
    let mut secrets = vec![
        d.join("federation/signing.key"),
        d.join("ca/ca.key"),
        d.join("broker/key.pem"),
        d.join("broker/signing.key"),
        d.join("negative/expired/key.pem"),
        d.join("negative/revoked/key.pem"),
        d.join("negative/foreign/key.pem"),
        d.join("negative/wrong-oin/key.pem"),
    ];
    assert_eq!(fed.parties.len(), 2, "one party per role by default");
    for p in &fed.parties {
        assert_eq!(p.dir, d.join("parties").join(p.oin.as_str()));
        assert!(p.cert.is_file() && p.party_toml.is_file());
        secrets.extend([p.key.clone(), p.signing_key.clone(), p.age_key.clone()]);
        let age = std::fs::read_to_string(&p.age_key).unwrap();
        assert!(age.starts_with("AGE-SECRET-KEY-1"));
        keys::signing_key_from_text(&std::fs::read_to_string(&p.signing_key).unwrap()).unwrap();
        let party: toml::Table = std::fs::read_to_string(&p.party_toml)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(party["oin"].as_str(), Some(p.oin.as_str()));
        assert_eq!(party["name"].as_str(), Some(p.name.as_str()));
    }
    for s in &secrets {
        assert!(s.is_file(), "{} is missing", s.display());
        assert_eq!(mode(s), 0o600, "{} is not 0600", s.display());
        assert_eq!(mode(s.parent().unwrap()), 0o700);
    }
    // The policy is copied byte for byte.
    assert_eq!(std::fs::read_to_string(&fed.policy.file).unwrap(), POLICY);
}

#[test]
fn documents_verify_with_the_federation_key() {
    let (_tmp, fed) = federation();
    let key = keys::verifying_key_from_text(
        &std::fs::read_to_string(&fed.federation.public_key).unwrap(),
    )
    .unwrap();
    let secret =
        keys::signing_key_from_text(&std::fs::read_to_string(&fed.federation.signing_key).unwrap())
            .unwrap();
    assert_eq!(secret.verifying_key(), key);

    let policy_bytes = std::fs::read(&fed.policy.file).unwrap();
    let policy_sig = std::fs::read_to_string(&fed.policy.sig).unwrap();
    let policy = load_signed_policy(&key, &policy_bytes, &policy_sig).unwrap();
    assert_eq!(policy.covenant.id, "testkring");
    assert_eq!(fed.covenant, "testkring");

    let dir_bytes = std::fs::read(&fed.directory.file).unwrap();
    let dir_sig = std::fs::read_to_string(&fed.directory.sig).unwrap();
    let directory = load_signed_directory(&key, &dir_bytes, &dir_sig, &policy).unwrap();
    // Signatures are bound to their document.
    assert!(load_signed_directory(&key, &dir_bytes, &policy_sig, &policy).is_err());
    assert!(load_signed_policy(&key, &policy_bytes, &dir_sig).is_err());

    // The convenience loaders agree.
    assert_eq!(fed.load_policy().unwrap(), policy);
    assert_eq!(fed.load_directory(&policy).unwrap(), directory);

    // Every party is listed with the fingerprint of its certificate and its keys.
    assert_eq!(directory.parties.len(), fed.parties.len());
    for p in &fed.parties {
        let entry = directory.party(&p.oin).unwrap();
        assert_eq!(entry.name, p.name);
        assert_eq!(entry.roles, p.roles);
        assert_eq!(entry.cert_fingerprint, fingerprint(&der_of(&p.cert)));
        assert!(!entry.revoked);
        assert!(entry.fg_contact.starts_with("fg@") && entry.fg_contact.ends_with(".example"));
        let signing =
            keys::signing_key_from_text(&std::fs::read_to_string(&p.signing_key).unwrap()).unwrap();
        assert_eq!(entry.verifying_key().unwrap(), signing.verifying_key());
        let age =
            keys::age_identity_from_text(&std::fs::read_to_string(&p.age_key).unwrap()).unwrap();
        assert_eq!(entry.age_recipient, age.to_public().to_string());
    }
    let broker_signing =
        keys::signing_key_from_text(&std::fs::read_to_string(&fed.broker.signing_key).unwrap())
            .unwrap();
    assert_eq!(
        directory.broker_key().unwrap(),
        broker_signing.verifying_key()
    );
    assert_eq!(
        directory.broker.cert_fingerprint,
        fingerprint(&der_of(&fed.broker.cert))
    );
    let fp = &directory.broker.cert_fingerprint;
    assert_eq!(fp.len(), 64);
    assert!(fp
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
}

#[test]
fn certificates_carry_the_oin_and_chain_to_our_ca() {
    let (_tmp, fed) = federation();
    let ca_der = der_of(&fed.ca.cert);
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    assert!(ca.is_ca());
    assert_eq!(ca.subject(), ca.issuer(), "the CA is self-signed");
    let ca_cn = ca
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    assert_eq!(ca_cn, "ketenpost dev federation CA");
    let ku = ca.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());

    let mut serials = std::collections::BTreeSet::new();
    for p in &fed.parties {
        let der = der_of(&p.cert);
        assert_eq!(oin_from_cert_der(&der).unwrap(), p.oin);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(cert.issuer(), ca.subject());
        cert.verify_signature(Some(ca.public_key())).unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), p.name);
        let o = cert.subject().iter_organization().next().unwrap();
        assert_eq!(o.as_str().unwrap(), p.name);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(cert.validity().is_valid());
        assert!(
            serials.insert(cert.raw_serial().to_vec()),
            "serials are distinct"
        );
    }

    // The broker's server certificate.
    let der = der_of(&fed.broker.cert);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    cert.verify_signature(Some(ca.public_key())).unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth);
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    let names: Vec<String> = san
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => d.to_string(),
            GeneralName::IPAddress(ip) if ip.len() == 4 => {
                std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap()).to_string()
            }
            GeneralName::IPAddress(ip) => {
                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap()).to_string()
            }
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(names, ["localhost", "127.0.0.1", "::1"]);
    assert!(matches!(oin_from_cert_der(&der), Err(Error::NoOin)));
}

#[test]
fn negative_material_is_bad_in_exactly_one_way() {
    let (_tmp, fed) = federation();
    let first = &fed.parties[0];
    let ca_der = der_of(&fed.ca.cert);
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    let now = ASN1Time::now().timestamp();

    // Expired: our CA, first party's OIN, not_after in the past.
    let der = der_of(&fed.negative.expired.cert);
    assert_eq!(oin_from_cert_der(&der).unwrap(), first.oin);
    let (_, expired) = X509Certificate::from_der(&der).unwrap();
    expired.verify_signature(Some(ca.public_key())).unwrap();
    assert!(expired.validity().not_after.timestamp() < now);
    assert!(!expired.validity().is_valid());

    // Revoked: valid, but its serial is in the CRL, which our CA signed.
    let der = der_of(&fed.negative.revoked.cert);
    assert_eq!(oin_from_cert_der(&der).unwrap(), first.oin);
    let (_, revoked) = X509Certificate::from_der(&der).unwrap();
    assert!(revoked.validity().is_valid());
    assert_eq!(
        hex::encode(revoked.raw_serial()),
        fed.negative.revoked_serial
    );
    let crl_pem = std::fs::read(&fed.ca.crl).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&crl_pem).unwrap();
    assert_eq!(pem.label, "X509 CRL");
    let (_, crl) = parse_x509_crl(&pem.contents).unwrap();
    assert_eq!(crl.issuer(), ca.subject());
    let listed: Vec<&[u8]> = crl
        .iter_revoked_certificates()
        .map(|r| r.raw_serial())
        .collect();
    assert_eq!(listed, [revoked.raw_serial()]);
    for p in &fed.parties {
        let der = der_of(&p.cert);
        let (_, c) = X509Certificate::from_der(&der).unwrap();
        assert!(!listed.contains(&c.raw_serial()));
    }

    // Foreign: first party's OIN, but another CA.
    let der = der_of(&fed.negative.foreign.cert);
    assert_eq!(oin_from_cert_der(&der).unwrap(), first.oin);
    let (_, foreign) = X509Certificate::from_der(&der).unwrap();
    assert_ne!(foreign.issuer(), ca.subject());
    assert!(foreign.verify_signature(Some(ca.public_key())).is_err());
    let foreign_ca_der = der_of(&fed.negative.foreign_ca);
    let (_, foreign_ca) = X509Certificate::from_der(&foreign_ca_der).unwrap();
    assert_eq!(foreign.issuer(), foreign_ca.subject());
    foreign
        .verify_signature(Some(foreign_ca.public_key()))
        .unwrap();

    // Wrong OIN: our CA, valid, an OIN no party has.
    let der = der_of(&fed.negative.wrong_oin.cert);
    let oin = oin_from_cert_der(&der).unwrap();
    assert_eq!(oin, fed.negative.wrong_oin.oin);
    assert!(fed.party(&oin).is_none());
    let policy = fed.load_policy().unwrap();
    let directory = fed.load_directory(&policy).unwrap();
    assert!(directory.party(&oin).is_none());
    let (_, wrong) = X509Certificate::from_der(&der).unwrap();
    wrong.verify_signature(Some(ca.public_key())).unwrap();
    assert!(wrong.validity().is_valid());
}

#[test]
fn oin_from_cert_der_rejects_garbage() {
    assert!(matches!(
        oin_from_cert_der(b"not a certificate"),
        Err(Error::BadCertificate(_))
    ));
    let (_tmp, fed) = federation();
    let mut der = der_of(&fed.parties[0].cert);
    der.push(0);
    assert!(matches!(
        oin_from_cert_der(&der),
        Err(Error::BadCertificate(_))
    ));
    // The CA has no serialNumber in its subject.
    assert!(matches!(
        oin_from_cert_der(&der_of(&fed.ca.cert)),
        Err(Error::NoOin)
    ));
}

#[test]
fn refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = write_policy(tmp.path());
    let out = tmp.path().join("fed");
    let first = init(&InitOptions::new(&policy, &out)).unwrap();
    let ca_before = std::fs::read(&first.ca.key).unwrap();

    let err = init(&InitOptions::new(&policy, &out)).unwrap_err();
    assert!(matches!(err, Error::OutDirNotEmpty { .. }), "{err}");
    assert!(err.is_config_error());
    assert_eq!(
        std::fs::read(&first.ca.key).unwrap(),
        ca_before,
        "untouched"
    );

    // Any non-empty directory is refused, not only a federation.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    assert!(matches!(
        init(&InitOptions::new(&policy, &other)),
        Err(Error::OutDirNotEmpty { .. })
    ));

    // With force the federation is replaced; unrelated files stay.
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let mut opts = InitOptions::new(&policy, &out);
    opts.force = true;
    let second = init(&opts).unwrap();
    assert_ne!(std::fs::read(&second.ca.key).unwrap(), ca_before);
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    second
        .load_directory(&second.load_policy().unwrap())
        .unwrap();

    // An empty existing directory is fine.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    init(&InitOptions::new(&policy, &empty)).unwrap();
}

#[test]
fn roster_overrides_the_parties() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = write_policy(tmp.path());
    let roster = tmp.path().join("roster.toml");
    std::fs::write(
        &roster,
        r#"
[[party]]
name = "Gemeente Vlissingen (dev)"
oin = "00000001002220647000"
roles = ["gemeente"]

[[party]]
name = "Zorgaanbieder Één (dev)"
oin = "00000001820000000001"
roles = ["zorgaanbieder", "gemeente"]
fg_contact = "privacy@zorg.example"
"#,
    )
    .unwrap();
    let mut opts = InitOptions::new(&policy, tmp.path().join("fed"));
    opts.roster = Some(roster.clone());
    let fed = init(&opts).unwrap();
    let oins: Vec<&str> = fed.parties.iter().map(|p| p.oin.as_str()).collect();
    assert_eq!(oins, ["00000001002220647000", "00000001820000000001"]);
    let directory = fed.load_directory(&fed.load_policy().unwrap()).unwrap();
    let vlissingen: Oin = "00000001002220647000".parse().unwrap();
    assert_eq!(
        directory.party(&vlissingen).unwrap().fg_contact,
        "fg@gemeente-vlissingen-dev.example"
    );
    let zorg = &fed.parties[1];
    assert_eq!(
        directory.party(&zorg.oin).unwrap().fg_contact,
        "privacy@zorg.example"
    );
    assert_eq!(oin_from_cert_der(&der_of(&zorg.cert)).unwrap(), zorg.oin);
    // Negative material impersonates the first party of the roster.
    assert_eq!(fed.negative.expired.oin, vlissingen);

    // A role the policy does not know is a roster error naming the file.
    std::fs::write(
        &roster,
        "[[party]]\nname = \"X\"\noin = \"00000001000000000009\"\nroles = [\"politie\"]\n",
    )
    .unwrap();
    let mut opts = InitOptions::new(&policy, tmp.path().join("fed2"));
    opts.roster = Some(roster.clone());
    match init(&opts) {
        Err(Error::Roster { path, reason }) => {
            assert_eq!(path.as_deref(), Some(roster.as_path()));
            assert!(reason.contains("politie"), "{reason}");
        }
        other => panic!("expected a roster error, got {other:?}"),
    }
    assert!(
        !tmp.path().join("fed2").exists(),
        "nothing written on error"
    );
}

#[test]
fn bad_policy_is_a_config_error_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("bad.toml");
    std::fs::write(&policy, "[covenant]\nid = \"Not Valid\"\nname = \"x\"\n").unwrap();
    let out = tmp.path().join("fed");
    let err = init(&InitOptions::new(&policy, &out)).unwrap_err();
    assert!(matches!(err, Error::Policy { .. }), "{err}");
    assert!(err.is_config_error());
    assert!(!out.exists());

    let err = init(&InitOptions::new(tmp.path().join("missing.toml"), &out)).unwrap_err();
    assert!(matches!(err, Error::Read { .. }), "{err}");
    assert!(err.is_config_error());
}

#[test]
fn manifest_loads_back_and_rejects_escaping_paths() {
    let (_tmp, fed) = federation();
    let again = Federation::load(&fed.dir).unwrap();
    assert_eq!(again, fed);
    let manifest = fed.dir.join("federation.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains("cert = \"ca/ca.pem\""), "paths are relative");
    std::fs::write(&manifest, text.replace("\"ca/ca.pem\"", "\"../ca.pem\"")).unwrap();
    assert!(matches!(
        Federation::load(&fed.dir),
        Err(Error::Manifest { .. })
    ));
    assert!(matches!(
        Federation::load(fed.dir.join("nowhere")),
        Err(Error::Manifest { .. })
    ));
}

#[test]
fn binary_exits_64_on_usage_errors() {
    let bin = env!("CARGO_BIN_EXE_ketenpost-certs");
    let tmp = tempfile::tempdir().unwrap();
    let policy = write_policy(tmp.path());
    let out = tmp.path().join("fed");

    let missing_arg = Command::new(bin)
        .args(["init", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(missing_arg.status.code(), Some(64));

    let ok = Command::new(bin)
        .arg("init")
        .arg("--policy")
        .arg(&policy)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(stdout.contains("covenant 'testkring'"), "{stdout}");

    let again = Command::new(bin)
        .arg("init")
        .arg("--policy")
        .arg(&policy)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("--force"), "{stderr}");

    let forced = Command::new(bin)
        .arg("init")
        .arg("--policy")
        .arg(&policy)
        .arg("--out")
        .arg(&out)
        .arg("--force")
        .output()
        .unwrap();
    assert_eq!(forced.status.code(), Some(0));

    let help = Command::new(bin).arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
}

#[test]
fn revoking_a_party_rewrites_the_crl_and_signs_a_new_directory_version() {
    let (_dir, fed) = federation();
    let policy = fed.load_policy().unwrap();
    let before = fed.load_directory(&policy).unwrap();
    let oin = fed.parties[1].oin.clone();
    let old_crl =
        ketenpost_certs::revoke::crl_serials(&std::fs::read(&fed.ca.crl).unwrap()).unwrap();
    let now = chrono::Utc::now();

    let serial = ketenpost_certs::revoke::revoke_party_cert(&fed, &oin, now).unwrap();
    let crl = ketenpost_certs::revoke::crl_serials(&std::fs::read(&fed.ca.crl).unwrap()).unwrap();
    assert!(crl.contains(&serial), "the party's serial is listed");
    assert!(
        old_crl.iter().all(|s| crl.contains(s)),
        "earlier revocations are kept"
    );
    assert_eq!(
        serial,
        ketenpost_certs::revoke::cert_serial(&std::fs::read(&fed.parties[1].cert).unwrap())
            .unwrap()
    );

    let version = ketenpost_certs::revoke::revoke_in_directory(&fed, &oin, now).unwrap();
    assert_eq!(version, before.serial + 1);
    let after = fed.load_directory(&policy).unwrap();
    assert_eq!(after.serial, version, "the new version verifies");
    assert!(after.active_party(&oin).is_none());
    assert!(after.party(&oin).is_some_and(|p| p.revoked));
    assert!(
        ketenpost_certs::revoke::revoke_in_directory(&fed, &oin, now).is_err(),
        "revoking twice spends no serial"
    );
}
