//! The value functions a mapping calls on source text (`fhir_date`,
//! `fhir_datetime`, `| decimal`) never panic on any text, and what they
//! return is valid FHIR R4 of its type, readable as JSON: proptest feeds
//! them arbitrary text, and text shaped like dates and numbers.

use fhirlift_mapping::{to_fhir_date, to_fhir_datetime, to_fhir_decimal};
use proptest::prelude::*;
use serde_json::{Value, json};

/// The validator's errors for `resource`.
fn errors(resource: &Value) -> Vec<String> {
    fhirlift_fhir::validate(resource)
        .into_iter()
        .filter(|i| i.is_error())
        .map(|i| i.to_string())
        .collect()
}

/// Text shaped like dates and times, right or wrong.
fn date_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,14}",
        "[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}",
        "[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{1,9})?)?(Z|[+-][0-9]{2}:?[0-9]{2})?",
        "[0-9]{1,2}/[0-9]{1,2}/[0-9]{2,4}",
        "[0-9]{8}[0-9]{0,6}(\\.[0-9]{1,4})?([+-][0-9]{4})?",
        "\\PC{0,24}",
    ]
}

fn format() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("DD/MM/YYYY".to_owned())),
        Just(Some("MM/DD/YYYY HH:mm".to_owned())),
        Just(Some("YYYYMMDDHHmmss".to_owned())),
        Just(Some("YYYY-MM".to_owned())),
        "[DMYHms/ :.-]{0,12}".prop_map(Some),
    ]
}

fn zone() -> impl Strategy<Value = (Option<String>, Option<String>)> {
    prop_oneof![
        Just((None, None)),
        Just((Some("Z".to_owned()), None)),
        Just((Some("-05:00".to_owned()), None)),
        Just((Some("+14:00".to_owned()), None)),
        Just((None, Some("America/New_York".to_owned()))),
        Just((None, Some("Europe/Berlin".to_owned()))),
        Just((None, Some("Australia/Lord_Howe".to_owned()))),
        "\\PC{0,8}".prop_map(|o| (Some(o), None)),
        "[A-Za-z/_]{0,16}".prop_map(|z| (None, Some(z))),
    ]
}

/// Text shaped like numbers, right or wrong.
fn number_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[+-]?[0-9]{1,40}(\\.[0-9]{0,40})?([eE][+-]?[0-9]{1,4})?",
        "[ +-]?0*[0-9]{0,3}[.,]?[0-9]{0,3} ?",
        "\\PC{0,16}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn a_date_is_valid_or_refused(input in date_like(), format in format()) {
        if let Ok(date) = to_fhir_date(&input, format.as_deref()) {
            let patient = json!({ "resourceType": "Patient", "birthDate": date });
            prop_assert!(errors(&patient).is_empty(), "{input:?} → {date:?}: {:?}", errors(&patient));
        }
    }

    #[test]
    fn a_datetime_is_valid_or_refused(
        input in date_like(),
        format in format(),
        (offset, zone) in zone(),
    ) {
        if let Ok(at) = to_fhir_datetime(&input, format.as_deref(), offset.as_deref(), zone.as_deref()) {
            let observation = json!({
                "resourceType": "Observation", "status": "final", "code": { "text": "t" },
                "effectiveDateTime": at,
            });
            prop_assert!(errors(&observation).is_empty(), "{input:?} → {at:?}: {:?}", errors(&observation));
        }
    }

    #[test]
    fn a_decimal_is_a_json_number_or_refused(input in number_like()) {
        if let Ok(digits) = to_fhir_decimal(&input) {
            // written as it is into the resource's text, as the renderer does
            let text = format!(
                r#"{{"resourceType":"Observation","status":"final","code":{{"text":"t"}},"valueQuantity":{{"value":{digits}}}}}"#
            );
            let parsed = serde_json::from_str::<Value>(&text);
            prop_assert!(parsed.is_ok(), "{input:?} → {digits}: {parsed:?}");
            let observation = parsed.unwrap();
            prop_assert!(errors(&observation).is_empty(), "{input:?} → {digits}: {:?}", errors(&observation));
        }
    }
}
