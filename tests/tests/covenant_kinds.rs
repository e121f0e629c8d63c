//! Covenant-defined kinds and categorised free text, played by real processes: a broker
//! and four agents on loopback, driven through the agents' HTTP API.
//!
//! The covenant is a small Zorg- en Veiligheidshuis of our own (not a seed): it declares a
//! `risicotaxatie` kind whose schema gives its free text a justice and a support field, and
//! it lets the police send signals whose justice context only the procesregisseur may read.
//! Each recipient must receive exactly its view; text of a category outside a role's view
//! must not reach that role's agent at all.

use std::collections::BTreeSet;

use anyhow::{ensure, Result};
use chrono::{Duration, Utc};
use ketenpost_tests::agents::{keys_of, view_fields, Outgoing, Region, WAIT};
use serde_json::{json, Value};

/// One scenario at a time: each starts five processes.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const POLICY: &str = r#"
[covenant]
id = "zvh-test"
name = "Zorg- en Veiligheidshuis (test)"

[roles.procesregisseur]
description = "directs the case for the Zorg- en Veiligheidshuis"
[roles.politie]
description = "police"
[roles.ggz]
description = "mental-health care"
[roles.woningcorporatie]
description = "housing corporation"

[kinds.risicotaxatie]
description = "Risk assessment prepared for the casusoverleg"
schema = '''
{
  "type": "object",
  "required": ["risiconiveau", "opgesteld_op"],
  "properties": {
    "risiconiveau": { "x-category": "case", "enum": ["laag", "midden", "hoog"] },
    "opgesteld_op": { "x-category": "case", "type": "string", "format": "date" },
    "justitiele_context": { "x-category": "justice", "type": "string", "minLength": 1, "maxLength": 8000 },
    "zorgcontext": {
      "x-category": "support",
      "type": "object",
      "additionalProperties": false,
      "properties": {
        "behandelaar": { "type": "string", "maxLength": 200 },
        "beeld": { "type": "string", "maxLength": 8000 }
      }
    }
  }
}
'''

[purposes.casus]
name = "Casusoverleg"
processing_activity = "zvh-test-casus"
legal_basis = "public task (test)"
case_retention = "1 year"
case_managers = ["procesregisseur"]

[purposes.casus.kinds.risicotaxatie]
senders = ["procesregisseur"]
recipients = ["politie", "ggz"]
consent = "not_required"
undelivered_ttl = "7 days"
views.politie = ["case", "justice"]
views.ggz = ["case", "support"]

[purposes.casus.kinds.signaal]
senders = ["politie"]
recipients = ["procesregisseur", "ggz", "woningcorporatie"]
consent = "not_required"
undelivered_ttl = "7 days"
views.procesregisseur = ["case", "justice", "support", "housing"]
views.ggz = ["case", "support"]
views.woningcorporatie = ["case", "housing"]
"#;

const JUSTICE_TEXT: &str = "Reclassering meldt een contactverbod met de buren tot 2026";
const SUPPORT_TEXT: &str = "Depressieve klachten, behandeling gestart bij de FACT-poli";
const HOUSING_TEXT: &str = "Huurachterstand van drie maanden, gesprek met de huismeester";

/// The message as the recipient's API returns it, in full, must not hold `text` anywhere.
fn nowhere(message: &Value, text: &str, who: &str) -> Result<()> {
    ensure!(
        !message.to_string().contains(text),
        "{who} received text outside its view: {message}"
    );
    Ok(())
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_covenant_kind_and_categorised_free_text_reach_each_role_as_its_view() -> Result<()> {
    let _one_at_a_time = SERIAL.lock().await;
    let region = Region::start(
        POLICY,
        None,
        &["procesregisseur", "politie", "ggz", "woningcorporatie"],
    )?;
    let regie = region.agent("procesregisseur")?;
    let politie = region.agent("politie")?;
    let ggz = region.agent("ggz")?;
    let corp = region.agent("woningcorporatie")?;
    let policy = &region.fed.policy;

    let case = regie
        .open_case("casus", &[&politie.oin, &ggz.oin, &corp.oin])
        .await?;
    politie.register_case_from(regie, &case).await?;

    // The covenant's own kind, by name through the HTTP API, one view per recipient role.
    let taxatie = json!({
        "risiconiveau": "hoog",
        "opgesteld_op": "2026-11-30",
        "justitiele_context": JUSTICE_TEXT,
        "zorgcontext": { "behandelaar": "FACT-team Noord", "beeld": SUPPORT_TEXT },
    });
    let id = regie
        .send(
            &Outgoing::new("risicotaxatie", &case, taxatie.clone())
                .to_role("politie")
                .to_role("ggz"),
        )
        .await?;
    regie.wait_for_status(&id, "delivered", WAIT).await?;

    let at_politie = politie.wait_for_message(&id, WAIT).await?;
    ensure!(at_politie["kind"] == "risicotaxatie", "{at_politie}");
    ensure!(at_politie["view"] == "politie", "{at_politie}");
    let want = set(&["risiconiveau", "opgesteld_op", "justitiele_context"]);
    ensure!(
        view_fields(policy, "casus", "risicotaxatie", "politie", &taxatie)? == want,
        "the policy's view of politie is not what the test expects"
    );
    ensure!(keys_of(&at_politie["payload"]) == want, "{at_politie}");
    ensure!(at_politie["payload"]["justitiele_context"] == JUSTICE_TEXT);
    nowhere(&at_politie, SUPPORT_TEXT, "politie")?;
    nowhere(&at_politie, "FACT-team Noord", "politie")?;

    let at_ggz = ggz.wait_for_message(&id, WAIT).await?;
    ensure!(at_ggz["view"] == "ggz", "{at_ggz}");
    let want = set(&["risiconiveau", "opgesteld_op", "zorgcontext"]);
    ensure!(keys_of(&at_ggz["payload"]) == want, "{at_ggz}");
    ensure!(at_ggz["payload"]["zorgcontext"] == taxatie["zorgcontext"]);
    nowhere(&at_ggz, JUSTICE_TEXT, "ggz")?;

    // A built-in signal with categorised free text: the justice context reaches only the
    // procesregisseur, whose view grants justice.
    let mut signaal = serde_json::to_value(ketenpost_schemas::payload::Signaal::example())?;
    signaal["waargenomen_op"] = json!(Utc::now() - Duration::hours(1));
    signaal["omschrijving"] = json!("Melding van bedreiging van een buurvrouw in het trappenhuis");
    signaal["categorie"] = json!("bedreiging");
    signaal["toelichting_justitie"] = json!(JUSTICE_TEXT);
    signaal["toelichting_zorg"] = json!(SUPPORT_TEXT);
    signaal["toelichting_wonen"] = json!(HOUSING_TEXT);
    let id = politie
        .send(
            &Outgoing::new("signaal", &case, signaal.clone())
                .to_role("procesregisseur")
                .to_role("ggz")
                .to_role("woningcorporatie"),
        )
        .await?;
    politie.wait_for_status(&id, "delivered", WAIT).await?;

    let at_regie = regie.wait_for_message(&id, WAIT).await?;
    ensure!(at_regie["payload"] == signaal, "{at_regie}");

    let at_ggz = ggz.wait_for_message(&id, WAIT).await?;
    ensure!(
        at_ggz["payload"]["toelichting_zorg"] == SUPPORT_TEXT,
        "{at_ggz}"
    );
    ensure!(at_ggz["payload"]["omschrijving"] == signaal["omschrijving"]);
    nowhere(&at_ggz, JUSTICE_TEXT, "ggz")?;
    nowhere(&at_ggz, HOUSING_TEXT, "ggz")?;

    let at_corp = corp.wait_for_message(&id, WAIT).await?;
    ensure!(
        at_corp["payload"]["toelichting_wonen"] == HOUSING_TEXT,
        "{at_corp}"
    );
    nowhere(&at_corp, JUSTICE_TEXT, "woningcorporatie")?;
    nowhere(&at_corp, SUPPORT_TEXT, "woningcorporatie")?;
    for (agent, view) in [(at_ggz, "ggz"), (at_corp, "woningcorporatie")] {
        let want = view_fields(policy, "casus", "signaal", view, &signaal)?;
        ensure!(keys_of(&agent["payload"]) == want, "{view}: {agent}");
    }

    // A kind the policy does not declare, and a field the declared schema does not
    // categorise, are refused by the sending agent.
    let code = regie
        .send_refused(
            &Outgoing::new("plan_van_aanpak", &case, json!({ "doelen": ["x"] })).to_role("ggz"),
            WAIT,
        )
        .await?;
    ensure!(code == "kind_not_allowed", "{code}");
    let mut extra = taxatie.clone();
    extra["notitie"] = json!("vrije tekst zonder categorie");
    let code = regie
        .send_refused(
            &Outgoing::new("risicotaxatie", &case, extra).to_role("ggz"),
            WAIT,
        )
        .await?;
    ensure!(code == "invalid_payload", "{code}");

    let audit = region.finish()?;
    ensure!(audit.verified.is_intact(), "{:?}", audit.verified.problems);
    Ok(())
}

/// The risicotaxatie schema of [`POLICY`], as a file of its own.
fn risicotaxatie_schema() -> Result<String> {
    let start = POLICY
        .find("schema = '''\n")
        .ok_or_else(|| anyhow::anyhow!("POLICY has an inline schema"))?
        + "schema = '''\n".len();
    let len = POLICY[start..]
        .find("'''")
        .ok_or_else(|| anyhow::anyhow!("the inline schema ends"))?;
    Ok(POLICY[start..start + len].to_owned())
}

/// A covenant kind whose schema is a file beside the policy (`schema_file`, pinned by
/// `schema_sha256`): `ketenpost-certs init` signs the policy with the file's schema inline,
/// the broker serves that signed text, and the agents validate, project and open the
/// kind by it, each recipient role getting its own view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_covenant_kind_with_its_schema_in_a_file_travels_with_its_views() -> Result<()> {
    let _one_at_a_time = SERIAL.lock().await;
    let schema = risicotaxatie_schema()?;
    let sha = ketenpost_schemas::digest::sha256_hex(schema.as_bytes());
    let inline = format!("schema = '''\n{schema}'''");
    ensure!(POLICY.contains(&inline));
    let policy_text = POLICY.replace(
        &inline,
        &format!("schema_file = \"kinds/risicotaxatie.schema.json\"\nschema_sha256 = \"{sha}\""),
    );
    let region = Region::start_with_files(
        &policy_text,
        &[("kinds/risicotaxatie.schema.json", &schema)],
        &["procesregisseur", "politie", "ggz"],
    )?;
    // What was signed, and what the broker serves, holds the schema itself.
    let signed = std::fs::read_to_string(&region.fed.files.policy.file)?;
    ensure!(!signed.contains("schema_file"), "{signed}");
    ensure!(signed.contains(&inline), "{signed}");
    ensure!(signed.contains(&sha), "{signed}");
    // The operator's tools read the file beside the policy and check its digest.
    let source = region.fed.path("policy.toml");
    let (ok, said) = certs(&["policy", "check", &source.to_string_lossy()])?;
    ensure!(ok && said.contains("valid policy"), "policy check: {said}");
    let (ok, said) = certs(&["policy", "explain", &source.to_string_lossy()])?;
    ensure!(
        ok && said.contains("justitiele_context (justice)"),
        "policy explain: {said}"
    );
    std::fs::write(
        region.fed.path("kinds/risicotaxatie.schema.json"),
        schema.replace("8000", "9000"),
    )?;
    let (ok, said) = certs(&["policy", "check", &source.to_string_lossy()])?;
    ensure!(
        !ok && said.contains("kind 'risicotaxatie'") && said.contains("schema_sha256 pins"),
        "policy check of a changed file: {said}"
    );
    let federation = region.fed.path("fed");
    let federation = federation.to_string_lossy();
    let (ok, said) = certs(&[
        "policy",
        "sign",
        "--federation",
        &federation,
        &source.to_string_lossy(),
    ])?;
    ensure!(
        !ok && said.contains("schema_sha256 pins"),
        "policy sign of a changed file: {said}"
    );
    // The file as pinned again: `policy sign` makes the next version, self-contained.
    std::fs::write(region.fed.path("kinds/risicotaxatie.schema.json"), &schema)?;
    let (ok, said) = certs(&[
        "policy",
        "sign",
        "--federation",
        &federation,
        &source.to_string_lossy(),
    ])?;
    ensure!(ok && said.contains("version 2"), "policy sign: {said}");
    let signed = std::fs::read_to_string(&region.fed.files.policy.file)?;
    ensure!(
        !signed.contains("schema_file") && signed.contains(&inline),
        "{signed}"
    );

    let regie = region.agent("procesregisseur")?;
    let politie = region.agent("politie")?;
    let ggz = region.agent("ggz")?;

    let case = regie.open_case("casus", &[&politie.oin, &ggz.oin]).await?;
    let taxatie = json!({
        "risiconiveau": "midden",
        "opgesteld_op": "2026-12-01",
        "justitiele_context": JUSTICE_TEXT,
        "zorgcontext": { "behandelaar": "FACT-team Zuid", "beeld": SUPPORT_TEXT },
    });
    let id = regie
        .send(
            &Outgoing::new("risicotaxatie", &case, taxatie.clone())
                .to_role("politie")
                .to_role("ggz"),
        )
        .await?;
    regie.wait_for_status(&id, "delivered", WAIT).await?;

    let at_politie = politie.wait_for_message(&id, WAIT).await?;
    ensure!(at_politie["kind"] == "risicotaxatie", "{at_politie}");
    let want = set(&["risiconiveau", "opgesteld_op", "justitiele_context"]);
    ensure!(keys_of(&at_politie["payload"]) == want, "{at_politie}");
    nowhere(&at_politie, SUPPORT_TEXT, "politie")?;

    let at_ggz = ggz.wait_for_message(&id, WAIT).await?;
    let want = set(&["risiconiveau", "opgesteld_op", "zorgcontext"]);
    ensure!(keys_of(&at_ggz["payload"]) == want, "{at_ggz}");
    ensure!(at_ggz["payload"]["zorgcontext"] == taxatie["zorgcontext"]);
    nowhere(&at_ggz, JUSTICE_TEXT, "ggz")?;

    // The file's schema is enforced: a field it does not declare is refused.
    let mut extra = taxatie.clone();
    extra["notitie"] = json!("vrije tekst zonder categorie");
    let code = regie
        .send_refused(
            &Outgoing::new("risicotaxatie", &case, extra).to_role("ggz"),
            WAIT,
        )
        .await?;
    ensure!(code == "invalid_payload", "{code}");

    let audit = region.finish()?;
    ensure!(audit.verified.is_intact(), "{:?}", audit.verified.problems);
    Ok(())
}

/// Run `ketenpost-certs` with `args`: whether it succeeded, and what it said.
fn certs(args: &[&str]) -> Result<(bool, String)> {
    let out = std::process::Command::new(ketenpost_tests::binary("ketenpost-certs")?)
        .args(args)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// `ketenpost-certs policy schema` prints the shipped JSON Schema of the policy file.
#[test]
fn policy_schema_prints_the_shipped_schema() -> Result<()> {
    let (ok, said) = certs(&["policy", "schema"])?;
    ensure!(ok, "{said}");
    let printed: Value = serde_json::from_str(&said)?;
    let shipped: Value = serde_json::from_str(&std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/json/policy.schema.json"),
    )?)?;
    ensure!(
        printed == shipped,
        "policy schema differs from schemas/json/policy.schema.json"
    );
    Ok(())
}
