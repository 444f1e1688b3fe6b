//! A bad registry is refused at start with the file and the key at fault.

use unefois_tests::sample_registry;

fn load_error(edit: impl Fn(&str) -> String) -> anyhow::Result<(String, String, String)> {
    let dir = tempfile::tempdir()?;
    let path = unefois_tests::sample_registry_with(dir.path(), edit)?;
    let error = broker::registry::load(&path).expect_err("the registry was accepted");
    let text = error.to_string();
    assert!(
        text.starts_with(&path.display().to_string()),
        "the error names the file: {text}"
    );
    Ok((error.key, error.message, text))
}

#[test]
fn the_sample_registry_loads() -> anyhow::Result<()> {
    let registry = broker::registry::load(&sample_registry())?;
    for ty in [
        "caf.quotient_familial",
        "dgfip.revenu_fiscal_reference",
        "mesr.statut_etudiant",
    ] {
        assert!(registry.attestation_type(ty).is_some(), "{ty}");
    }
    for p in [
        "caf",
        "dgfip",
        "mesr",
        "mairie-lyon",
        "france-services-lyon",
        "cnil",
        "mairie-test",
    ] {
        assert!(registry.participant(p).is_some(), "{p}");
    }
    assert_eq!(registry.habilitations_of("mairie-test").count(), 0);
    Ok(())
}

#[test]
fn an_unknown_field_names_its_key() -> anyhow::Result<()> {
    let (key, message, _) = load_error(|s| {
        s.replacen(
            "roles = [\"provider\"]",
            "roles = [\"provider\"]\nrolez = [\"auditor\"]",
            1,
        )
    })?;
    assert_eq!(key, "participants[0].rolez");
    assert!(message.contains("rolez"), "{message}");
    Ok(())
}

#[test]
fn an_unknown_participant_in_a_habilitation_names_its_key() -> anyhow::Result<()> {
    let (key, message, _) = load_error(|s| {
        s.replacen(
            "consumer = \"mairie-lyon\"\nattestation_type = \"dgfip",
            "consumer = \"mairie-lille\"\nattestation_type = \"dgfip",
            1,
        )
    })?;
    assert_eq!(key, "habilitations[1].consumer");
    assert!(message.contains("mairie-lille"), "{message}");
    Ok(())
}

#[test]
fn a_duplicate_id_names_its_key() -> anyhow::Result<()> {
    let (key, message, _) = load_error(|s| s.replacen("id = \"mesr\"", "id = \"dgfip\"", 1))?;
    assert_eq!(key, "participants[2].id");
    assert!(message.contains("duplicate"), "{message}");
    Ok(())
}

#[test]
fn an_unknown_role_and_a_bad_value_type_name_their_keys() -> anyhow::Result<()> {
    let (key, message, _) =
        load_error(|s| s.replacen("roles = [\"auditor\"]", "roles = [\"superuser\"]", 1))?;
    assert_eq!(key, "participants[5].roles[0]");
    assert!(message.contains("superuser"), "{message}");

    let (key, _, _) = load_error(|s| s.replacen("max_age_days = 31", "max_age_days = \"31\"", 1))?;
    assert_eq!(key, "attestation_types[0].max_age_days");
    Ok(())
}

#[test]
fn a_syntax_error_is_located() -> anyhow::Result<()> {
    let (key, message, _) = load_error(|s| s.replacen("[federation]", "[federation", 1))?;
    assert_eq!(key, "(syntax)");
    assert!(message.contains("line"), "{message}");
    Ok(())
}
