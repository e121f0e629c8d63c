//! One scenario per seed covenant, played by real processes on loopback: a broker and the
//! agents the scenario needs, each a child process, driven through the agents' HTTP API.
//!
//! Each scenario follows its covenant's text (`seed:line`, the seeds are in
//! `/work/shared/seeds/`) and its policy in `schemas/policies/`, and ends by stopping every
//! process and reading the broker's audit trail, whose hash chain and checkpoints must
//! verify. The scenarios run one at a time (a 2-core machine runs five agents at most), and
//! every wait is bounded by [`WAIT`].

use std::collections::BTreeSet;

use anyhow::{ensure, Context, Result};
use chrono::{Datelike, Duration, Utc};
use ketenpost_broker::audit::{AuditEvent, Outcome};
use ketenpost_schemas::duration::PolicyDuration;
use ketenpost_schemas::kind::Kind;
use ketenpost_schemas::payload::{Aanmeldbericht, Aanmelding};
use ketenpost_tests::agents::{
    datalek_payload, keys_of, reactie_payload, seed_policy, signaal_payload, view_fields,
    AgentLink, AgentProcess, AuditLog, Outgoing, Region, WAIT,
};
use serde_json::{json, Value};

/// One scenario at a time: each starts up to five processes.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the party that obtained the consent keeps on file; only its SHA-256 travels.
const WELKOM_IN_DE_WIJK: &str = "Welkom in de Wijk Overeenkomst (000:293-297), \
    getekend door de cliënt, de zorgaanbieder en de gemeente";

/// The OINs of a sent message's recipients, from its status.
fn recipients(status: &Value) -> BTreeSet<String> {
    status["recipients"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["oin"].as_str().map(str::to_owned))
        .collect()
}

fn oins(agents: &[&AgentProcess]) -> BTreeSet<String> {
    agents.iter().map(|a| a.oin.to_string()).collect()
}

fn flags(status: &Value) -> Vec<&str> {
    status["flags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn intact(audit: &AuditLog) -> Result<()> {
    ensure!(
        audit.verified.is_intact(),
        "the audit trail does not verify: {:?}",
        audit.verified.problems
    );
    ensure!(audit.verified.records > 0, "the audit trail is empty");
    Ok(())
}

/// Walcheren (000): Team Thuis under the gemeente's regie, the client's consent, the
/// aanmelding with a housing-only view for the corporation, and a breach notice within 48 h
/// to the parties concerned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walcheren_team_thuis_with_consent_and_a_breach_notice_within_48_hours() -> Result<()> {
    walcheren(AgentLink::Quic).await
}

/// The same scenario with every agent on TLS over TCP (`transport = "tcp"`), as in a
/// network that blocks UDP; the agents' QUIC address never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walcheren_over_tcp() -> Result<()> {
    walcheren(AgentLink::Tcp).await
}

async fn walcheren(link: AgentLink) -> Result<()> {
    let _one_at_a_time = SERIAL.lock().await;
    let region = Region::start_with(
        &seed_policy("walcheren")?,
        None,
        &["gemeente", "woningcorporatie", "zorgaanbieder"],
        link,
    )?;
    let gem = region.agent("gemeente")?;
    let corp = region.agent("woningcorporatie")?;
    let zorg = region.agent("zorgaanbieder")?;

    // 000:1016 "De gemeente is de regievoerder over Team Thuis": the corporation cannot
    // open a case.
    let (status, code, _) = corp
        .refusal("POST", "/v1/cases", Some(json!({ "purpose": "uitstroom" })))
        .await?;
    ensure!(
        (status, code.as_str()) == (422, "not_permitted"),
        "{status} {code}"
    );

    // Team Thuis is the gemeente, the corporation and the (ambulant) begeleider
    // (000:1002-1014); the gemeente forms it for the client (000:1508-1518).
    let case = gem.open_case("uitstroom", &[&corp.oin, &zorg.oin]).await?;
    zorg.register_case_from(gem, &case).await?;

    // 000:289-297: the client consents that "gemeente, zorgaanbieders en woningcorporatie
    // informatie met elkaar delen"; the care provider's contact person records it
    // (000:325-329).
    let consent = zorg
        .grant_consent(
            &case,
            &["gemeente", "woningcorporatie", "zorgaanbieder"],
            WELKOM_IN_DE_WIJK,
        )
        .await?;

    // 000:1024-1028: the care provider proposes the client to Team Thuis (the aanmelding).
    let full = serde_json::to_value(Aanmelding::example())?;
    let aanmelding = zorg
        .send(
            &Outgoing::new("aanmelding", &case, full.clone())
                .to_role("gemeente")
                .to_role("woningcorporatie"),
        )
        .await?;
    let done = zorg.wait_for_status(&aanmelding, "delivered", WAIT).await?;
    ensure!(recipients(&done) == oins(&[gem, corp]), "{done}");

    // The corporation gets only its view: identity, contact and housing (000:299-301, with
    // "op hoofdlijnen" of 001:439-445 and 002:834-836) — never support, income, debt.
    let at_corp = corp.wait_for_message(&aanmelding, WAIT).await?;
    ensure!(at_corp["view"] == "woningcorporatie", "{at_corp}");
    let want = view_fields(
        &region.fed.policy,
        "uitstroom",
        "aanmelding",
        "woningcorporatie",
        &full,
    )?;
    ensure!(
        want.contains("identiteit") && want.contains("woonwens") && !want.contains("schulden"),
        "{want:?}"
    );
    ensure!(
        keys_of(&at_corp["payload"]) == want,
        "the corporation got {:?}, its view is {want:?}",
        keys_of(&at_corp["payload"])
    );
    for absent in [
        "ondersteuning",
        "inkomen",
        "schulden",
        "motivatie",
        "justitie",
    ] {
        ensure!(
            at_corp["payload"].get(absent).is_none(),
            "the corporation got '{absent}'"
        );
    }
    for field in &want {
        ensure!(
            at_corp["payload"][field] == full[field],
            "'{field}' changed"
        );
    }
    ensure!(
        at_corp["legal_basis"] == json!({ "basis": "consent", "consent_id": consent }),
        "{}",
        at_corp["legal_basis"]
    );
    // The gemeente, which sees debts "volledig in beeld" (000:335-337), gets its wider view.
    let at_gem = gem.wait_for_message(&aanmelding, WAIT).await?;
    ensure!(at_gem["view"] == "gemeente", "{at_gem}");
    ensure!(at_gem["payload"].get("ondersteuning").is_some());
    ensure!(at_gem["payload"].get("schulden").is_some());

    // Bijlage 4 art. 6 (000:1772-1776): a breach is reported to "de betrokken
    // wederpartij(en)" "uiterlijk binnen 48 uur"; art. 7 (000:1782-1802) lists its content.
    // The corporation loses a printout of the aanmelding; it names no recipients and the
    // broker routes the notice to the parties that exchanged data about the case.
    let now = Utc::now();
    let breach = corp
        .send(&Outgoing::new(
            "datalek_melding",
            &case,
            datalek_payload(
                &[&case],
                now - Duration::hours(1),
                now,
                now + Duration::minutes(10),
            )?,
        ))
        .await?;
    // 000:1780-1802: a notice without its cause (item v) is refused by the sending agent,
    // which names the missing item.
    let mut without_cause = datalek_payload(
        &[&case],
        now - Duration::hours(1),
        now,
        now + Duration::minutes(10),
    )?;
    without_cause
        .as_object_mut()
        .context("payload")?
        .remove("oorzaak");
    let (status, code, message) = corp
        .refusal(
            "POST",
            "/v1/messages",
            Some(Outgoing::new("datalek_melding", &case, without_cause).json()),
        )
        .await?;
    ensure!(
        status == 422 && code == "malformed" && message.contains("oorzaak"),
        "{status} {code} {message}"
    );
    let done = corp.wait_for_status(&breach, "delivered", WAIT).await?;
    ensure!(recipients(&done) == oins(&[gem, zorg]), "{done}");
    ensure!(!flags(&done).contains(&"late"), "{done}");
    for a in [gem, zorg] {
        let got = a.wait_for_message(&breach, WAIT).await?;
        ensure!(got["kind"] == "datalek_melding", "{got}");
        // Art. 7 iv: the identity of the persons concerned is in every party's view.
        ensure!(
            got["payload"]["identiteit_betrokkenen"].is_array(),
            "{}",
            got["payload"]
        );
        let listed = a.inbox_summary(&breach).await?.context("not listed")?;
        ensure!(
            listed["fg_contact"].is_string(),
            "the FG is not named: {listed}"
        );
    }

    let (gem_oin, zorg_oin, concerned) = (
        gem.oin.to_string(),
        zorg.oin.to_string(),
        oins(&[gem, zorg]),
    );
    region.check_link().await?;
    let audit = region.finish()?;
    intact(&audit)?;
    let opened = audit
        .of(AuditEvent::CaseOpened)
        .into_iter()
        .find(|r| r.case_ref.as_deref() == Some(case.as_str()))
        .context("no case_opened record")?;
    ensure!(opened.actor.as_deref() == Some(gem_oin.as_str()));
    ensure!(
        audit
            .of(AuditEvent::ConsentGranted)
            .iter()
            .any(|r| r.actor.as_deref() == Some(zorg_oin.as_str())
                && r.case_ref.as_deref() == Some(case.as_str())),
        "no consent_granted record by the care provider"
    );
    let accepted = audit.expect(AuditEvent::Accepted, &aanmelding)?;
    ensure!(accepted.processing_activity.as_deref() == Some("walcheren-uitstroom"));
    let routed = audit.expect(AuditEvent::BreachNotice, &breach)?;
    ensure!(
        routed
            .counterparties
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            == concerned,
        "{routed:?}"
    );
    ensure!(
        audit.find(AuditEvent::DeadlineLate, &breach).is_none(),
        "{:?}",
        audit.summary(&breach)
    );
    Ok(())
}

/// Flevoland (001): the corporation shares a signal with the care provider, which answers
/// within 24 hours; the corporation sees the answer and its signal delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flevoland_a_corporation_signal_is_answered_by_the_care_provider_within_24_hours(
) -> Result<()> {
    flevoland(AgentLink::Quic).await
}

/// The same scenario with `transport = "auto"` where the broker's QUIC port does not answer
/// (UDP dropped): every agent falls back to TCP, says so in its log, and the scenario runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flevoland_auto_falls_back_to_tcp_when_quic_does_not_answer() -> Result<()> {
    flevoland(AgentLink::AutoFallback).await
}

async fn flevoland(link: AgentLink) -> Result<()> {
    let _one_at_a_time = SERIAL.lock().await;
    let region = Region::start_with(
        &seed_policy("flevoland")?,
        None,
        &["woningcorporatie", "zorgaanbieder"],
        link,
    )?;
    let corp = region.agent("woningcorporatie")?;
    let zorg = region.agent("zorgaanbieder")?;

    // The care provider has the regie in the uitstroomtafel (001:133-134, 001:259-261) and
    // records the uitstromer's consent (001:292-293, 001:322-323).
    let gemeente = region.oin("gemeente")?;
    let case = zorg.open_case("uitstroom", &[&corp.oin, &gemeente]).await?;
    let consent = zorg
        .grant_consent(
            &case,
            &["zorgaanbieder", "woningcorporatie", "gemeente"],
            "toestemming uitstromer (001:292-293)",
        )
        .await?;

    // 001:448-451 "De woningcorporatie deelt signalen van zorg of overlast met de uitstromer
    // én met de zorgaanbieder"; 001:460-463 on nuisance it contacts the care provider. The
    // corporation was told the case and the consent by the care provider.
    let signal = corp
        .send(
            &Outgoing::new(
                "signaal",
                &case,
                signaal_payload("geluidsoverlast", Utc::now() - Duration::hours(3))?,
            )
            .to(&zorg.oin)
            .purpose("uitstroom")
            .consent(&consent),
        )
        .await?;
    let got = zorg.wait_for_inbox("signaal", WAIT).await?;
    ensure!(got["message_id"] == json!(signal), "{got}");
    ensure!(got["payload"]["categorie"] == "geluidsoverlast", "{got}");

    // 001:465-466 "De zorgaanbieder heeft binnen 24 uur contact met de woningcorporatie":
    // the care provider's inbox shows the answer due 24 hours after delivery.
    let listed = zorg.inbox_summary(&signal).await?.context("not listed")?;
    let received: chrono::DateTime<Utc> = serde_json::from_value(listed["received_at"].clone())?;
    let due: chrono::DateTime<Utc> = serde_json::from_value(listed["answer_due"].clone())
        .with_context(|| format!("no answer_due: {listed}"))?;
    let term = due - received;
    ensure!(
        (term - Duration::hours(24)).num_seconds().abs() <= 60,
        "answer due after {term}, not 24 h: {listed}"
    );

    // The answer (reactie) about the steps taken, in reply to the signal.
    let answer = zorg
        .send(
            &Outgoing::new("reactie", &case, reactie_payload()?)
                .to(&corp.oin)
                .in_reply_to(&signal),
        )
        .await?;
    let reply = corp.wait_for_message(&answer, WAIT).await?;
    ensure!(reply["kind"] == "reactie", "{reply}");
    ensure!(reply["in_reply_to"] == json!(signal), "{reply}");
    ensure!(reply["sender"] == json!(zorg.oin), "{reply}");
    ensure!(
        reply["payload"]["ondernomen_stappen"]
            .as_array()
            .is_some_and(|s| !s.is_empty()),
        "{reply}"
    );
    // The corporation sees its signal delivered, with nothing overdue.
    let status = corp.wait_for_status(&signal, "delivered", WAIT).await?;
    ensure!(recipients(&status) == oins(&[zorg]), "{status}");
    ensure!(status["overdue"] == json!([]), "{status}");
    zorg.wait_for_status(&answer, "delivered", WAIT).await?;

    let zorg_oin = zorg.oin.to_string();
    region.check_link().await?;
    let audit = region.finish()?;
    intact(&audit)?;
    audit.expect(AuditEvent::Accepted, &signal)?;
    audit.expect(AuditEvent::Receipt, &signal)?;
    let answered = audit.expect(AuditEvent::Accepted, &answer)?;
    ensure!(answered.actor.as_deref() == Some(zorg_oin.as_str()));
    // Answered in time: no late answer and no overdue notice against the signal.
    ensure!(
        audit.find(AuditEvent::DeadlineLate, &signal).is_none()
            && audit.find(AuditEvent::DeadlineNotice, &signal).is_none(),
        "{:?}",
        audit.summary(&signal)
    );
    Ok(())
}

/// Friesland (002): the Transferpunt sends the six-field aanmeldbericht to a corporation,
/// and a signal shared without consent under afspraak 8f is accepted and flagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friesland_the_six_field_aanmeldbericht_and_sharing_without_consent_under_8f() -> Result<()>
{
    let _one_at_a_time = SERIAL.lock().await;
    let region = Region::start(
        &seed_policy("friesland")?,
        None,
        &["transferpunt", "woningcorporatie", "zorgaanbieder"],
    )?;
    let tp = region.agent("transferpunt")?;
    let corp = region.agent("woningcorporatie")?;
    let zorg = region.agent("zorgaanbieder")?;

    // 002:330-332 "Voor gezamenlijke documenten wordt ... een bewaartermijn van 7 jaar
    // gehanteerd."
    let uitstroom = region
        .fed
        .policy
        .purposes
        .get("uitstroom")
        .context("no uitstroom purpose")?;
    ensure!(uitstroom.case_retention == PolicyDuration::Years(7));

    // 002:769-771 "Zorgaanbieders melden alle uitstromers aan bij het Transferpunt"; the
    // uitstroomcoördinator asks the uitstromer's consent (002:1277-1278).
    let case = zorg.open_case("uitstroom", &[&tp.oin]).await?;
    let consent = zorg
        .grant_consent(
            &case,
            &[
                "zorgaanbieder",
                "transferpunt",
                "gemeente",
                "woningcorporatie",
            ],
            "toestemming uitstromer (002:1277-1278)",
        )
        .await?;

    // 002:1461-1464 "vraagt het Transferpunt namens de Gemeente bij een Woningcorporatie
    // bemiddeling aan ... met behulp van een aanmeldbericht": the Transferpunt adds the
    // corporation to the case and sends it.
    tp.add_member(&case, &corp.oin, Some("uitstroom")).await?;
    let full = serde_json::to_value(Aanmeldbericht::example())?;
    let bericht = tp
        .send(
            &Outgoing::new("aanmeldbericht", &case, full.clone())
                .to(&corp.oin)
                .purpose("uitstroom")
                .consent(&consent),
        )
        .await?;
    tp.wait_for_status(&bericht, "delivered", WAIT).await?;
    let got = corp.wait_for_message(&bericht, WAIT).await?;
    ensure!(got["view"] == "woningcorporatie", "{got}");
    // 002:1467-1473: exactly these six fields arrive, unchanged.
    let six: BTreeSet<String> = [
        "burgerservicenummer_hoofdbewoner",
        "achternaam_initialen",
        "leefsituatie",
        "beoogde_gemeente_van_uitstroom",
        "ondersteuningsprofiel_uitstromer",
        "contactgegevens_betrokken_contactpersonen",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    ensure!(
        keys_of(&got["payload"]) == six,
        "{:?}",
        keys_of(&got["payload"])
    );
    ensure!(
        got["payload"] == full,
        "the aanmeldbericht changed on the way"
    );

    // 002:333-344 (afspraak 8f): sharing beyond consent "wanneer acuut levensgevaar voor
    // betrokkene dreigt; bij aanzienlijk risico voor een ander op levensgevaar". A second
    // case has no consent at all: a threat to the neighbours goes to the care provider
    // anyway, on the acute_danger ground, and the FGs see it flagged.
    let other = zorg.open_case("uitstroom", &[&corp.oin]).await?;
    let threat = Outgoing::new(
        "signaal",
        &other,
        signaal_payload("bedreiging", Utc::now() - Duration::hours(1))?,
    )
    .to(&zorg.oin)
    .purpose("uitstroom");
    // Without the ground it is refused: there is no consent.
    let code = corp.send_refused(&threat, WAIT).await?;
    ensure!(code == "no_consent", "refused with {code}");
    let urgent = corp
        .send(&threat.clone().ground("acute_danger", "afspraak-8f-i"))
        .await?;
    let status = corp.wait_for_status(&urgent, "delivered", WAIT).await?;
    ensure!(flags(&status).contains(&"non_consent_ground"), "{status}");
    let at_zorg = zorg.wait_for_message(&urgent, WAIT).await?;
    ensure!(
        at_zorg["legal_basis"]
            == json!({ "basis": "non_consent", "ground": "acute_danger", "justification": "afspraak-8f-i" }),
        "{}",
        at_zorg["legal_basis"]
    );

    let corp_oin = corp.oin.to_string();
    let audit = region.finish()?;
    intact(&audit)?;
    audit.expect(AuditEvent::Accepted, &bericht)?;
    let flagged = audit.expect(AuditEvent::NonConsentUse, &urgent)?;
    ensure!(flagged.outcome == Outcome::Flagged, "{flagged:?}");
    ensure!(
        flagged.reason.as_deref() == Some("acute_danger"),
        "{flagged:?}"
    );
    ensure!(flagged.actor.as_deref() == Some(corp_oin.as_str()));
    ensure!(
        audit.find(AuditEvent::NonConsentUse, &bericht).is_none(),
        "the consent-based aanmeldbericht was flagged"
    );
    Ok(())
}

/// IJmond & Zuid-Kennemerland (003): signals shared within 48 hours among the
/// corporation, the care provider, the gemeente and the police; the offer of a dwelling
/// and the care provider's advice on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kennemerland_signals_within_48_hours_and_the_advice_on_an_offered_dwelling() -> Result<()>
{
    let _one_at_a_time = SERIAL.lock().await;
    let region = Region::start(
        &seed_policy("kennemerland")?,
        None,
        &["zorgaanbieder", "woningcorporatie", "gemeente", "politie"],
    )?;
    let zorg = region.agent("zorgaanbieder")?;
    let corp = region.agent("woningcorporatie")?;
    let gem = region.agent("gemeente")?;
    let pol = region.agent("politie")?;

    // The woonbegeleider takes the initiative in the housing phase (003:1186-1188) and has
    // the client's consent for sharing with the corporation (003:1929-1931).
    let case = zorg
        .open_case("huisvesting", &[&corp.oin, &gem.oin, &pol.oin])
        .await?;
    let consent = zorg
        .grant_consent(
            &case,
            &["zorgaanbieder", "woningcorporatie", "gemeente", "politie"],
            "woonbegeleidingsovereenkomst (003:1047-1053)",
        )
        .await?;

    // 003:1617-1626 "Signalen van of bij de corporatie, zorgorganisatie, gemeente, politie
    // ... alle signalen binnen 48 uur door de betrokken partijen met elkaar gedeeld".
    let signal = |to: &[&AgentProcess], category: &str, hours: i64| -> Result<Outgoing> {
        let observed = Utc::now() - Duration::hours(hours);
        let mut m = Outgoing::new("signaal", &case, signaal_payload(category, observed)?)
            .purpose("huisvesting")
            .consent(&consent);
        for a in to {
            m = m.to(&a.oin);
        }
        Ok(m)
    };
    // The corporation: threats to the neighbours, seen three hours ago.
    let from_corp = corp
        .send(&signal(&[zorg, gem, pol], "bedreiging", 3)?)
        .await?;
    // The police: the client no longer accepts the woonbegeleiding, seen an hour ago.
    let from_police = pol
        .send(&signal(&[corp, zorg, gem], "zorgmijding", 1)?)
        .await?;
    // The gemeente passes on a signal seen 50 hours ago: accepted, flagged late.
    let late = gem.send(&signal(&[zorg], "vervuiling", 50)?).await?;

    for (sender, id, to) in [
        (corp, &from_corp, vec![zorg, gem, pol]),
        (pol, &from_police, vec![corp, zorg, gem]),
        (gem, &late, vec![zorg]),
    ] {
        let status = sender.wait_for_status(id, "delivered", WAIT).await?;
        ensure!(recipients(&status) == oins(&to), "{status}");
        let is_late = flags(&status).contains(&"late");
        ensure!(is_late == (id == &late), "late flag wrong: {status}");
        for r in to {
            let got = r.wait_for_message(id, WAIT).await?;
            ensure!(
                got["kind"] == "signaal" && got["view"] == json!(r.roles[0]),
                "{got}"
            );
        }
    }

    // 003:1269-1276: the corporation offers a dwelling to the client's zorgorganisatie and
    // asks its advice, which comes "uiterlijk binnen 5 werkdagen". The policy carries the
    // offer and the advice as reactie, and sets no answer term for it: reactie also answers
    // signals, and the format has one term per kind (schemas/policies/README.md, "Limits of
    // the format"). The scenario checks that reading: the advice travels in reply to the
    // offer, and no deadline is claimed for it.
    let huisvesting = region
        .fed
        .policy
        .purposes
        .get("huisvesting")
        .context("no huisvesting purpose")?;
    let reactie_rule = huisvesting
        .kinds
        .get(&Kind::Reactie)
        .context("no reactie rule")?;
    ensure!(reactie_rule.answer_within.is_none());
    let offer = corp
        .send(
            &Outgoing::new("reactie", &case, reactie_payload()?)
                .to(&zorg.oin)
                .purpose("huisvesting")
                .consent(&consent),
        )
        .await?;
    zorg.wait_for_message(&offer, WAIT).await?;
    let listed = zorg.inbox_summary(&offer).await?.context("not listed")?;
    ensure!(listed["answer_due"].is_null(), "{listed}");
    let advice = zorg
        .send(
            &Outgoing::new("reactie", &case, reactie_payload()?)
                .to(&corp.oin)
                .in_reply_to(&offer),
        )
        .await?;
    let got = corp.wait_for_message(&advice, WAIT).await?;
    ensure!(got["in_reply_to"] == json!(offer), "{got}");
    zorg.wait_for_status(&advice, "delivered", WAIT).await?;

    let audit = region.finish()?;
    intact(&audit)?;
    for id in [&from_corp, &from_police] {
        audit.expect(AuditEvent::Accepted, id)?;
        ensure!(
            audit.find(AuditEvent::DeadlineLate, id).is_none(),
            "{:?}",
            audit.summary(id)
        );
    }
    let flagged = audit.expect(AuditEvent::DeadlineLate, &late)?;
    ensure!(flagged.outcome == Outcome::Flagged, "{flagged:?}");
    ensure!(
        flagged.reason.as_deref() == Some("late_on_arrival"),
        "{flagged:?}"
    );
    Ok(())
}

/// Enschede (004): the procesmanager opens a case in a pillar and forms the joint case
/// meeting; a partner's aanmelding reaches each partner in its own view; a breach goes to
/// the procesmanager within 12 hours; the pillar keeps its data at most 5 years.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enschede_joint_case_meeting_breach_to_the_procesmanager_within_12_hours() -> Result<()> {
    let _one_at_a_time = SERIAL.lock().await;
    let region = Region::start(
        &seed_policy("enschede")?,
        None,
        &[
            "procesmanager",
            "politie",
            "woningcorporatie",
            "zorgaanbieder",
        ],
    )?;
    let pm = region.agent("procesmanager")?;
    let pol = region.agent("politie")?;
    let corp = region.agent("woningcorporatie")?;
    let zorg = region.agent("zorgaanbieder")?;

    // 004:700-701 "gegevens uiterlijk binnen 5 jaar na beëindiging van de casus binnen de
    // betreffende pijler": every pillar keeps a case 5 years after closure.
    for pillar in ["woonoverlast", "verward_gedrag", "tijdelijk_huisverbod"] {
        let p = region
            .fed
            .policy
            .purposes
            .get(pillar)
            .with_context(|| format!("no pillar {pillar}"))?;
        ensure!(
            p.case_retention == PolicyDuration::Years(5),
            "{pillar}: {:?}",
            p.case_retention
        );
    }

    // 004:136-139, 004:318-326: the procesmanager coordinates the cases; a partner cannot
    // open one itself.
    let (status, code, _) = pol
        .refusal(
            "POST",
            "/v1/cases",
            Some(json!({ "purpose": "woonoverlast" })),
        )
        .await?;
    ensure!(
        (status, code.as_str()) == (422, "not_permitted"),
        "{status} {code}"
    );

    // 004:338-345 "Voorafgaand aan het casusoverleg dient te worden bepaald van welke
    // ketenpartners het noodzakelijk is dat zij deelnemen": the procesmanager opens a case
    // in pillar I (aanpak woonoverlast, 004:177-180) and adds exactly those partners.
    let gemeente = region.oin("gemeente")?;
    let welzijn = region.oin("welzijn")?;
    let case = pm
        .open_case(
            "woonoverlast",
            &[&pol.oin, &corp.oin, &zorg.oin, &gemeente, &welzijn],
        )
        .await?;
    let team = pm.call("GET", &format!("/v1/cases/{case}"), None).await?;
    ensure!(
        team["members"].as_object().map(|m| m.len()) == Some(6),
        "{team}"
    );

    // The police registers the household (aanmelding, 004:359-363); "uitsluitend die
    // informatie ... die noodzakelijk wordt geacht" (004:344-345): each partner its view.
    let full = serde_json::to_value(Aanmelding::example())?;
    let aanmelding = pol
        .send(
            &Outgoing::new("aanmelding", &case, full.clone())
                .to(&pm.oin)
                .to(&corp.oin)
                .to(&zorg.oin)
                .purpose("woonoverlast"),
        )
        .await?;
    let done = pol.wait_for_status(&aanmelding, "delivered", WAIT).await?;
    ensure!(recipients(&done) == oins(&[pm, corp, zorg]), "{done}");
    for (a, role) in [
        (pm, "procesmanager"),
        (corp, "woningcorporatie"),
        (zorg, "zorgaanbieder"),
    ] {
        let got = a.wait_for_message(&aanmelding, WAIT).await?;
        ensure!(got["view"] == role, "{got}");
        let want = view_fields(
            &region.fed.policy,
            "woonoverlast",
            "aanmelding",
            role,
            &full,
        )?;
        ensure!(
            keys_of(&got["payload"]) == want,
            "{role} got {:?}, its view is {want:?}",
            keys_of(&got["payload"])
        );
    }
    let at_corp = corp.wait_for_message(&aanmelding, WAIT).await?;
    ensure!(at_corp["payload"].get("ondersteuning").is_none());

    // 004:529-531 strict purpose binding: the same case cannot carry a message of another
    // pillar.
    let code = pol
        .send_refused(
            &Outgoing::new(
                "signaal",
                &case,
                signaal_payload("overig", Utc::now() - Duration::hours(1))?,
            )
            .to(&pm.oin)
            .purpose("verward_gedrag")
            .ground("acute_danger", "art-6-1-d"),
            WAIT,
        )
        .await?;
    ensure!(code == "wrong_purpose", "refused with {code}");

    // 004:608-614 "De ketenpartners stellen de procesmanager onverwijld, maar uiterlijk
    // binnen 12 uur, na kennisneming op de hoogte van een inbreuk": the care provider
    // reports at once; it goes to the procesmanager only, not to the other partners.
    let now = Utc::now();
    let on_time = zorg
        .send(&Outgoing::new(
            "datalek_melding",
            &case,
            datalek_payload(
                &[&case],
                now - Duration::hours(1),
                now,
                now + Duration::minutes(10),
            )?,
        ))
        .await?;
    let done = zorg.wait_for_status(&on_time, "delivered", WAIT).await?;
    ensure!(recipients(&done) == oins(&[pm]), "{done}");
    ensure!(!flags(&done).contains(&"late"), "{done}");
    let got = pm.wait_for_message(&on_time, WAIT).await?;
    ensure!(got["view"] == "procesmanager", "{got}");
    let listed = pm.inbox_summary(&on_time).await?.context("not listed")?;
    ensure!(listed["fg_contact"].is_string(), "{listed}");
    // The police reports a leak that began 14 hours ago and was discovered 13 hours ago,
    // past the 12 hours: accepted, delivered, flagged late.
    // The police sent the aanmelding but received nothing in the case, so its agent does
    // not know the case: it names the purpose, and the procesmanager as 18.3 says.
    let late = pol
        .send(
            &Outgoing::new(
                "datalek_melding",
                &case,
                datalek_payload(
                    &[&case],
                    now - Duration::hours(14),
                    now - Duration::hours(13),
                    now + Duration::minutes(10),
                )?,
            )
            .to(&pm.oin)
            .purpose("woonoverlast"),
        )
        .await?;
    let done = pol.wait_for_status(&late, "delivered", WAIT).await?;
    ensure!(recipients(&done) == oins(&[pm]), "{done}");
    ensure!(flags(&done).contains(&"late"), "{done}");
    pm.wait_for_message(&late, WAIT).await?;
    for a in [corp, pol, zorg] {
        for id in [&on_time, &late] {
            ensure!(!a.has_received(id).await?, "{} got breach {id}", a.name);
        }
    }

    // The procesmanager closes the case; the 5-year clock starts at closure.
    let closed = pm
        .call("POST", &format!("/v1/cases/{case}/close"), None)
        .await?;
    let closed_at: chrono::DateTime<Utc> = serde_json::from_value(closed["closed_at"].clone())
        .with_context(|| format!("no closed_at: {closed}"))?;
    let pillar = region
        .fed
        .policy
        .purposes
        .get("woonoverlast")
        .context("no pillar")?;
    let delete_by = pillar
        .case_retention
        .deadline(closed_at, &region.fed.policy.calendar);
    ensure!(
        delete_by.year() == closed_at.year() + 5 && delete_by > closed_at + Duration::days(1820),
        "retention ends {delete_by}"
    );

    let pm_oin = pm.oin.to_string();
    let audit = region.finish()?;
    intact(&audit)?;
    let opened = audit
        .of(AuditEvent::CaseOpened)
        .into_iter()
        .find(|r| r.case_ref.as_deref() == Some(case.as_str()))
        .context("no case_opened record")?;
    ensure!(opened.actor.as_deref() == Some(pm_oin.as_str()));
    let added = audit
        .of(AuditEvent::CaseMemberAdded)
        .into_iter()
        .filter(|r| r.case_ref.as_deref() == Some(case.as_str()))
        .count();
    ensure!(added == 5, "{added} members added");
    for id in [&on_time, &late] {
        let routed = audit.expect(AuditEvent::BreachNotice, id)?;
        ensure!(routed.counterparties == vec![pm_oin.clone()], "{routed:?}");
    }
    ensure!(audit.find(AuditEvent::DeadlineLate, &on_time).is_none());
    let flagged = audit.expect(AuditEvent::DeadlineLate, &late)?;
    ensure!(
        flagged.reason.as_deref() == Some("late_on_arrival"),
        "{flagged:?}"
    );
    ensure!(
        audit
            .of(AuditEvent::CaseClosed)
            .iter()
            .any(|r| r.case_ref.as_deref() == Some(case.as_str())),
        "no case_closed record"
    );
    Ok(())
}

/// Enschede (004:608-614): a partner must tell the procesmanager of every breach that may
/// affect a case of a pillar, also when the procesmanager itself never sent or received a
/// message about that case.
///
/// The Enschede policy says so with `notify_case_managers = true` on its datalek_melding
/// rules: the broker adds the managers of the affected cases to the parties that exchanged
/// messages about them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enschede_a_breach_reaches_the_procesmanager_that_had_no_flow_in_the_case() -> Result<()> {
    let _one_at_a_time = SERIAL.lock().await;
    let region = Region::start(
        &seed_policy("enschede")?,
        None,
        &["procesmanager", "politie", "zorgaanbieder"],
    )?;
    let pm = region.agent("procesmanager")?;
    let pol = region.agent("politie")?;
    let zorg = region.agent("zorgaanbieder")?;
    let case = pm.open_case("woonoverlast", &[&pol.oin, &zorg.oin]).await?;
    // The police shares a signal with the care provider only (004:1004-1005).
    let signal = pol
        .send(
            &Outgoing::new(
                "signaal",
                &case,
                signaal_payload("overig", Utc::now() - Duration::hours(1))?,
            )
            .to(&zorg.oin)
            .purpose("woonoverlast"),
        )
        .await?;
    pol.wait_for_status(&signal, "delivered", WAIT).await?;
    // The care provider then loses that signal and tells the procesmanager (18.3).
    let now = Utc::now();
    let breach = zorg
        .send(
            &Outgoing::new(
                "datalek_melding",
                &case,
                datalek_payload(
                    &[&case],
                    now - Duration::hours(1),
                    now,
                    now + Duration::minutes(10),
                )?,
            )
            .to(&pm.oin),
        )
        .await?;
    // Fails today: the status becomes `rejected` with `breach_recipients`.
    let done = zorg.wait_for_status(&breach, "delivered", WAIT).await?;
    ensure!(recipients(&done) == oins(&[pm]), "{done}");
    pm.wait_for_message(&breach, WAIT).await?;
    intact(&region.finish()?)
}
