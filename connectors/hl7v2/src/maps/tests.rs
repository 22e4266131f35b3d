//! The built-in maps, message by message.

use super::*;

fn patient_of(text: &str) -> Value {
    let message = Message::parse(text.as_bytes(), 0).expect("the test message parses");
    let MessageMap::Mapped(resources) = map_message(&message, &MapOptions::default()).unwrap()
    else {
        panic!("mapped");
    };
    resources
        .into_iter()
        .find(|r| r.resource_type == "Patient")
        .unwrap()
        .resource
}

/// Regression: OBRs of one ORU sharing an order number were one
/// DiagnosticReport, and their OBX the same Observations (on real
/// files 537 OBR became 195 reports and 3,912 OBX 3,116 results).
#[test]
fn three_obrs_sharing_an_order_number_are_three_reports_with_six_results() {
    let text = "MSH|^~\\&|LAB|FAC|||202401011200||ORU^R01|MSG9|P|2.5.1\r\
         PID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\r\
         OBR|1|PL77^LIS|FL77^LAB|CBC^Blood count^L\r\
         OBX|1|NM|HGB^Hemoglobin^L||13.5|g/dL\r\
         OBX|2|NM|WBC^Leukocytes^L||6.1|10*3/uL\r\
         OBR|2|PL77^LIS|FL77^LAB|BMP^Basic panel^L\r\
         OBX|1|NM|NA^Sodium^L||140|mmol/L\r\
         OBX|2|NM|K^Potassium^L||4.1|mmol/L\r\
         OBR|3|PL77^LIS|FL77^LAB|LIP^Lipids^L\r\
         OBX|1|NM|CHOL^Cholesterol^L||190|mg/dL\r\
         OBX|2|NM|TRIG^Triglycerides^L||120|mg/dL\r";
    let message = Message::parse(text.as_bytes(), 0).expect("the test message parses");
    let MessageMap::Mapped(resources) = map_message(&message, &MapOptions::default()).unwrap()
    else {
        panic!("mapped");
    };
    let of = |t: &str| -> Vec<&MappedResource> {
        resources.iter().filter(|r| r.resource_type == t).collect()
    };
    let reports = of("DiagnosticReport");
    let results = of("Observation");
    assert_eq!(reports.len(), 3);
    assert_eq!(results.len(), 6);
    let identities: std::collections::HashSet<_> = resources
        .iter()
        .map(|r| (r.resource_type, &r.identity))
        .collect();
    assert_eq!(identities.len(), resources.len(), "no identity twice");
    // each report keeps the order numbers as typed identifiers, and
    // lists its own two results
    for (report, code) in reports.iter().zip(["CBC", "BMP", "LIP"]) {
        assert_eq!(report.resource["code"]["coding"][0]["code"], code);
        let typed: Vec<&Value> = report.resource["identifier"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["type"].is_object())
            .collect();
        assert_eq!(typed.len(), 2, "{:?}", report.resource["identifier"]);
        assert_eq!(report.resource["result"].as_array().unwrap().len(), 2);
    }
    // regression: the orders shared the placer number too and became one
    // ServiceRequest (the last OBR's code) that all three reports were
    // based on; each OBR is its own request
    let requests = of("ServiceRequest");
    assert_eq!(requests.len(), 3);
    for (report, request) in reports.iter().zip(&requests) {
        assert_eq!(report.resource["basedOn"][0]["reference"], request.full_url);
        assert_eq!(report.resource["code"], request.resource["code"]);
    }
    assert_eq!(reports[0].identity.1, "FL77");
    assert_eq!(reports[1].identity.1, "FL77-OBR-2");
    assert_eq!(reports[2].identity.1, "FL77-OBR-3");
}

#[test]
fn pd1_names_the_general_practitioners_as_logical_references() {
    let patient = patient_of(
        "MSH|^~\\&|APP|FAC|||202401011200||ADT^A08|MSG1|P|2.5.1\r\
         PID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\r\
         PD1|||Clinic B^^^^^HOSP&1.2.3&ISO^^^^ORG77|1111111111^Smith^Ann^^^^^^NPI\r",
    );
    let carers = patient["generalPractitioner"].as_array().unwrap();
    assert_eq!(carers.len(), 2, "{carers:?}");
    assert_eq!(carers[0]["type"], "Organization");
    assert_eq!(carers[0]["display"], "Clinic B");
    assert_eq!(carers[0]["identifier"]["value"], "ORG77");
    assert_eq!(carers[0]["identifier"]["system"], "urn:oid:1.2.3");
    assert_eq!(carers[1]["type"], "Practitioner");
    assert_eq!(carers[1]["display"], "Ann Smith");
    assert_eq!(carers[1]["identifier"]["value"], "1111111111");
}

#[test]
fn race_and_ethnicity_become_us_core_extensions_and_local_codes_stay_text() {
    let patient = patient_of(
        "MSH|^~\\&|APP|FAC|||202401011200||ADT^A08|MSG1|P|2.5.1\r\
         PID|1||123^^^HOSP^MR||Doe^Jane||19800101|F||2106-3^WHITE^HL7000~2131-1^Other Race^CDCREC~W^Wheat||||||||||||H^Hispanic^HL70189\r",
    );
    let ext = |url: &str| {
        patient["extension"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["url"] == url)
            .cloned()
            .unwrap()
    };
    let race = ext(US_CORE_RACE);
    assert_eq!(race["extension"][0]["url"], "ombCategory");
    assert_eq!(race["extension"][0]["valueCoding"]["code"], "2106-3");
    assert_eq!(race["extension"][0]["valueCoding"]["display"], "White");
    assert_eq!(race["extension"][1]["url"], "detailed");
    assert_eq!(race["extension"][1]["valueCoding"]["code"], "2131-1");
    assert_eq!(race["extension"][2]["url"], "text");
    assert_eq!(
        race["extension"][2]["valueString"],
        "White+Other Race+Wheat"
    );
    assert_eq!(race["extension"].as_array().unwrap().len(), 3);
    let ethnicity = ext(US_CORE_ETHNICITY);
    assert_eq!(ethnicity["extension"][0]["valueCoding"]["code"], "2135-2");
    assert_eq!(
        ethnicity["extension"][1]["valueString"],
        "Hispanic or Latino"
    );
}

/// Every resource of one message, by type.
fn mapped(text: &str) -> Vec<MappedResource> {
    let message = Message::parse(text.as_bytes(), 0).expect("the test message parses");
    let MessageMap::Mapped(resources) = map_message(&message, &MapOptions::default()).unwrap()
    else {
        panic!("mapped");
    };
    resources
}

/// Regression: OBX-5 repetitions (`60~120`) kept only the first value.
/// The guide: one component per repetition, coded as the observation;
/// text repetitions stay lines of one string.
#[test]
fn repeated_obx_values_become_components_and_text_repeats_lines() {
    let resources = mapped(
        "MSH|^~\\&|LAB|FAC|||202401011200||ORU^R01|MSG10|P|2.5.1\r\
         PID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\r\
         OBR|1|PL1^LIS|FL1^LAB|BP^Blood pressure^L\r\
         OBX|1|NM|BP^Blood pressure^L||60~120|mm[Hg]^^UCUM\r\
         OBX|2|ST|NOTE^Comment^L||first line~second line\r\
         OBX|3|CWE|ORG^Organism^L||A^Alpha^L~B^Beta^L\r",
    );
    let obs: Vec<&Value> = resources
        .iter()
        .filter(|r| r.resource_type == "Observation")
        .map(|r| &r.resource)
        .collect();
    assert_eq!(obs.len(), 3);
    let bp = obs[0];
    assert!(bp.get("valueQuantity").is_none(), "{bp}");
    let values: Vec<&Value> = bp["component"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["valueQuantity"]["value"])
        .collect();
    assert_eq!(values, [&json!(60), &json!(120)]);
    assert_eq!(bp["component"][1]["code"], bp["code"]);
    assert_eq!(bp["component"][0]["valueQuantity"]["code"], "mm[Hg]");
    assert_eq!(obs[1]["valueString"], "first line\nsecond line");
    assert_eq!(obs[2]["component"].as_array().unwrap().len(), 2);
    assert_eq!(
        obs[2]["component"][1]["valueCodeableConcept"]["coding"][0]["code"],
        "B"
    );
    assert_valid(&resources);
}

/// The resources of one type.
fn of_type<'r>(resources: &'r [MappedResource], t: &str) -> Vec<&'r Value> {
    resources
        .iter()
        .filter(|r| r.resource_type == t)
        .map(|r| &r.resource)
        .collect()
}

/// Every resource valid R4 (errors only; advisory bindings are information).
fn assert_valid(resources: &[MappedResource]) {
    for r in resources {
        let errors: Vec<String> = fhirlift_fhir::validate(&r.resource)
            .into_iter()
            .filter(fhirlift_fhir::Issue::is_error)
            .map(|i| i.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", r.resource_type);
    }
}

/// Regression: an ORU's orders and specimens were dropped (SPM in 113
/// ORU messages, 0 Specimens written). Now: a ServiceRequest per OBR that
/// the report is based on, the NTE after the OBR as the order's note, and
/// the SPM as a Specimen of the report, the order and (the only one) of
/// each result.
#[test]
fn an_oru_order_with_its_note_and_specimen() {
    let resources = mapped(
        "MSH|^~\\&|LAB|FAC|||202401011200||ORU^R01|MSG11|P|2.5.1\r\
         PID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\r\
         ORC|RE|PL9^EHR|FL9^LAB||CM||||202401011000|||1234^Welby^Marcus^^^^^^NPI\r\
         OBR|1|PL9^EHR|FL9^LAB|2345-7^Glucose^LN|||202401010800\r\
         NTE|1||Fasting sample\r\
         OBX|1|NM|2345-7^Glucose^LN||95|mg/dL^^UCUM|||||F\r\
         SPM|1|SP77&LAB^SP77F&LAB||119297000^Blood specimen^SCT|||||||||||||202401010745|202401010900\r",
    );
    assert_valid(&resources);
    let requests = of_type(&resources, "ServiceRequest");
    assert_eq!(requests.len(), 1);
    let sr = requests[0];
    assert_eq!(sr["status"], "completed");
    assert_eq!(sr["intent"], "order");
    assert_eq!(sr["code"]["coding"][0]["code"], "2345-7");
    assert_eq!(sr["note"][0]["text"], "Fasting sample");
    assert_eq!(sr["requester"]["display"], "Marcus Welby");
    assert_eq!(sr["authoredOn"], "2024-01-01T10:00:00Z");
    let full_url = |t: &str| {
        resources
            .iter()
            .find(|r| r.resource_type == t)
            .unwrap()
            .full_url
            .clone()
    };
    let report = of_type(&resources, "DiagnosticReport")[0];
    assert_eq!(
        report["basedOn"][0]["reference"],
        full_url("ServiceRequest")
    );
    let specimens = of_type(&resources, "Specimen");
    assert_eq!(specimens.len(), 1);
    let spm = specimens[0];
    assert_eq!(spm["identifier"][0]["value"], "SP77F");
    assert_eq!(spm["type"]["coding"][0]["code"], "119297000");
    assert_eq!(
        spm["collection"]["collectedDateTime"],
        "2024-01-01T07:45:00Z"
    );
    assert_eq!(spm["receivedTime"], "2024-01-01T09:00:00Z");
    let specimen = full_url("Specimen");
    assert_eq!(report["specimen"][0]["reference"], specimen);
    assert_eq!(sr["specimen"][0]["reference"], specimen);
    assert_eq!(spm["request"][0]["reference"], full_url("ServiceRequest"));
    let obs = of_type(&resources, "Observation")[0];
    assert_eq!(obs["specimen"]["reference"], specimen);
}

/// ORM^O01 and OML^O21 were not mapped (43 messages of the corpus): each
/// ORC/OBR is a ServiceRequest, with its notes, reasons and specimens.
#[test]
fn orm_and_oml_orders_become_service_requests() {
    let orm = mapped(
        "MSH|^~\\&|EHR|FAC|||202401011200||ORM^O01|MSG12|P|2.3\r\
         PID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\r\
         ORC|NW|88502218^EHR|||||||201410060929|||^MOUSE^MINNIE\r\
         OBR|1|88502218^EHR||24317-0^Hemogram^LN|||||||G\r\
         DG1|1||E10.9^Diabetes^I10\r\
         ORC|CA|88502219^EHR\r\
         OBR|2|88502219^EHR||2345-7^Glucose^LN\r",
    );
    assert_valid(&orm);
    let requests = of_type(&orm, "ServiceRequest");
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0]["status"], "active");
    assert_eq!(requests[0]["intent"], "reflex-order");
    assert_eq!(requests[0]["reasonCode"][0]["coding"][0]["code"], "E10.9");
    assert_eq!(requests[1]["status"], "revoked");
    let placer = |r: &Value| r["identifier"][0]["value"].clone();
    assert_eq!(placer(requests[0]), "88502218");
    assert_eq!(placer(requests[1]), "88502219");
    let oml = mapped(
        "MSH|^~\\&|EHR|FAC|||202401011200||OML^O21|MSG13|P|2.5.1\r\
         PID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\r\
         ORC|NW|PL1^EHR\r\
         OBR|1|PL1^EHR||57698-3^Lipid panel^LN\r\
         NTE|1||Urgent\r\
         SPM|1|S1&EHR||SKBP^Biopsy, Skin^HL70487\r",
    );
    assert_valid(&oml);
    let sr = of_type(&oml, "ServiceRequest")[0];
    assert_eq!(sr["note"][0]["text"], "Urgent");
    let spm = of_type(&oml, "Specimen")[0];
    assert_eq!(spm["identifier"][0]["value"], "S1");
    assert_eq!(
        spm["type"]["coding"][0]["system"],
        "http://terminology.hl7.org/CodeSystem/v2-0487"
    );
    assert_eq!(sr["specimen"].as_array().unwrap().len(), 1);
}

/// MDM^T02 (7 corpus messages had no map): TXA → DocumentReference, the
/// OBX text lines as its plain-text content, an ED as an attachment; a
/// cancel (T11) is entered-in-error.
#[test]
fn mdm_documents_carry_their_text_and_attachments() {
    let resources = mapped(
        "MSH|^~\\&|DOCS|FAC|||202401011200||MDM^T02|DOC1|P|2.5.1\r\
         PID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\r\
         PV1|1|O|||||||||||||||||V9^^^HOSP^VN\r\
         TXA|1|DS|TX|20240101110000|C006^Woolfson^Kathleen|20240101100000||||||DOC-77^EHR|||||AU||AV\r\
         OBX|1|TX|NOTE^Note^L||First line||||||F\r\
         OBX|2|TX|NOTE^Note^L||Second line||||||F\r\
         OBX|3|ED|PDF^Report^L||^AP^PDF^Base64^JVBERi0xLjQ=||||||F\r",
    );
    assert_valid(&resources);
    let doc = of_type(&resources, "DocumentReference")[0];
    assert_eq!(doc["status"], "current");
    assert_eq!(doc["docStatus"], "final");
    assert_eq!(doc["masterIdentifier"]["value"], "DOC-77");
    assert_eq!(
        doc["type"]["coding"][0]["system"],
        "http://terminology.hl7.org/CodeSystem/v2-0270"
    );
    assert_eq!(doc["author"][0]["display"], "Kathleen Woolfson");
    let text = &doc["content"][0]["attachment"];
    assert_eq!(text["contentType"], "text/plain; charset=utf-8");
    assert_eq!(text["data"], "Rmlyc3QgbGluZQpTZWNvbmQgbGluZQ==");
    let pdf = &doc["content"][1]["attachment"];
    assert_eq!(pdf["contentType"], "application/pdf");
    assert_eq!(pdf["data"], "JVBERi0xLjQ=");
    assert!(doc["context"]["encounter"][0]["reference"].is_string());
    let cancel = mapped(
        "MSH|^~\\&|DOCS|FAC|||202401011200||MDM^T11|DOC2|P|2.5.1\r\
         PID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\r\
         TXA|1|DS|TX|||||||||DOC-77^EHR\r",
    );
    assert_valid(&cancel);
    let doc = of_type(&cancel, "DocumentReference")[0];
    assert_eq!(doc["status"], "entered-in-error");
    assert_eq!(
        doc["content"][0]["attachment"]["title"],
        "document without content in the message"
    );
}

/// SIU (8 corpus messages had no map): SCH → Appointment with its
/// patient, staff, location and resources as participants, its status by
/// event.
#[test]
fn siu_schedules_become_appointments_with_their_participants() {
    let text = |event: &str| {
        format!(
            "MSH|^~\\&|SCH|FAC|||202401011200||SIU^{event}|S1|P|2.5.1\r\
             SCH|12345^EHR|36996^SCHED||||Add^Added^L|CHECKUP^Checkup^L|Normal^Normal^HL70277|70|Min|^^^20240818113000+0200^20240818123000+0200\r\
             NTE|1||Annual checkup\r\
             PID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\r\
             RGS|1\r\
             AIS|1||58410-2^CBC panel^LN|20240818113000+0200\r\
             AIG|1||123^ABC Cell Counter^L\r\
             AIL|1||LabUnit101^Lab Room 01^^GHH\r\
             AIP|1||400^PB^Tim^G\r"
        )
    };
    let booked = mapped(&text("S12"));
    assert_valid(&booked);
    let appt = of_type(&booked, "Appointment")[0];
    assert_eq!(appt["status"], "booked");
    assert_eq!(appt["identifier"][0]["value"], "36996");
    assert_eq!(appt["start"], "2024-08-18T11:30:00+02:00");
    assert_eq!(appt["end"], "2024-08-18T12:30:00+02:00");
    assert_eq!(appt["minutesDuration"], 70);
    assert_eq!(appt["serviceType"][0]["coding"][0]["code"], "58410-2");
    assert_eq!(appt["comment"], "Annual checkup");
    let participants = appt["participant"].as_array().unwrap();
    assert_eq!(participants.len(), 4, "{participants:?}");
    assert_eq!(participants[1]["actor"]["display"], "ABC Cell Counter");
    assert_eq!(participants[2]["actor"]["type"], "Location");
    assert_eq!(participants[3]["actor"]["display"], "Tim PB");
    for (event, status) in [
        ("S15", "cancelled"),
        ("S17", "entered-in-error"),
        ("S26", "noshow"),
    ] {
        let resources = mapped(&text(event));
        assert_eq!(
            of_type(&resources, "Appointment")[0]["status"],
            status,
            "{event}"
        );
    }
}

/// ADT's PR1, ROL and IN1/IN2 were dropped (PR1 in 4, ROL in 6, IN1 in 6
/// corpus messages): a Procedure, a participant of the visit, and a
/// Coverage paid by an Organization, on identities a replay finds again.
#[test]
fn adt_procedures_and_coverage() {
    let in1 = segment(
        "IN1",
        &[
            (1, "1"),
            (2, "BAV^Blue Advantage HMO"),
            (3, "Org-12345^^^BCBS"),
            (4, "Blue Cross Blue Shield of Texas"),
            (5, "1979 MILKY WAY^^VERONA^WI^53593^US"),
            (8, "Grp-12345"),
            (9, "BCBS HMO"),
            (12, "20240101"),
            (13, "20241231"),
            (16, "Doe^Jane"),
            (17, "SEL"),
            (36, "POL-9"),
        ],
    );
    let in2 = segment("IN2", &[(61, "MB-12")]);
    let pv1 = segment("PV1", &[(1, "1"), (2, "I"), (19, "V77^^^HOSP^VN")]);
    let text = format!(
        "MSH|^~\\&|ADT|FAC|||202401011200||ADT^A01|A1|P|2.5.1\r\
         PID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\r\
         {pv1}\r\
         ROL|1|AD|AT^Attending^HL70443|555^Welby^Marcus|20240101080000\r\
         PR1|1||80146002^Appendectomy^SCT||20240101093000|||||||1234^Cutter^Sam\r{in1}\r{in2}\r"
    );
    let text = text.as_str();
    let resources = mapped(text);
    assert_valid(&resources);
    // ROL in the visit: a participant of the Encounter
    let encounter = of_type(&resources, "Encounter")[0];
    let participant = encounter["participant"].as_array().unwrap().last().unwrap();
    assert_eq!(participant["individual"]["display"], "Marcus Welby");
    assert_eq!(participant["type"][0]["coding"][0]["code"], "AT");
    assert_eq!(participant["period"]["start"], "2024-01-01T08:00:00Z");
    let procedure = of_type(&resources, "Procedure")[0];
    assert_eq!(procedure["status"], "completed");
    assert_eq!(procedure["code"]["coding"][0]["code"], "80146002");
    assert_eq!(procedure["performedDateTime"], "2024-01-01T09:30:00Z");
    assert_eq!(procedure["performer"][0]["actor"]["display"], "Sam Cutter");
    let coverage = of_type(&resources, "Coverage")[0];
    assert_eq!(coverage["identifier"][0]["value"], "POL-9");
    assert!(
        coverage["identifier"][0]["system"]
            .as_str()
            .unwrap()
            .starts_with("urn:fhirlift:hl7v2:coverage:")
    );
    assert_eq!(coverage["subscriberId"], "MB-12");
    assert_eq!(coverage["relationship"]["coding"][0]["code"], "self");
    assert_eq!(coverage["period"]["start"], "2024-01-01");
    let payor = of_type(&resources, "Organization")[0];
    assert_eq!(payor["name"], "Blue Cross Blue Shield of Texas");
    assert_eq!(payor["identifier"][0]["value"], "Org-12345");
    let payor_url = &resources
        .iter()
        .find(|r| r.resource_type == "Organization")
        .unwrap()
        .full_url;
    assert_eq!(coverage["payor"][0]["reference"], *payor_url);
    // a replay maps to the same identities
    let again = mapped(text);
    let ids = |rs: &[MappedResource]| -> Vec<(String, String)> {
        rs.iter().map(|r| r.identity.clone()).collect()
    };
    assert_eq!(ids(&resources), ids(&again));
}

/// A segment with the given fields (1-based) and the others empty.
fn segment(name: &str, fields: &[(usize, &str)]) -> String {
    let last = fields.iter().map(|f| f.0).max().unwrap_or(0);
    let mut out = vec![String::new(); last + 1];
    out[0] = name.to_owned();
    for (n, value) in fields {
        out[*n] = (*value).to_owned();
    }
    out.join("|")
}

/// ADT^A60 (allergy updates, IAM) had no map: each IAM updates the
/// AllergyIntolerance the same allergen's AL1 writes, and a delete marks
/// it entered-in-error.
#[test]
fn a60_allergy_updates_update_the_al1_allergy() {
    let al1 = mapped(
        "MSH|^~\\&|ADT|FAC|||202401011200||ADT^A01|A1|P|2.5.1\r\
         PID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\r\
         AL1|1|DA|PEN^Penicillin^L|SV|Hives\r",
    );
    let update = mapped(
        "MSH|^~\\&|ADT|FAC|||202401021200||ADT^A60|A2|P|2.5.1\r\
         PID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\r\
         IAM|1|DA|PEN^Penicillin^L|MI|Rash|D|ALG-9^EHR||||20230101\r",
    );
    assert_valid(&update);
    let identity = |rs: &[MappedResource]| {
        rs.iter()
            .find(|r| r.resource_type == "AllergyIntolerance")
            .unwrap()
            .identity
            .clone()
    };
    assert_eq!(identity(&al1), identity(&update), "the same allergy");
    assert!(
        of_type(&update, "Encounter").is_empty(),
        "A60 is about the person"
    );
    let allergy = of_type(&update, "AllergyIntolerance")[0];
    assert_eq!(
        allergy["verificationStatus"]["coding"][0]["code"],
        "entered-in-error"
    );
    assert!(allergy.get("clinicalStatus").is_none());
    assert_eq!(allergy["onsetDateTime"], "2023-01-01");
    assert_eq!(allergy["identifier"][1]["value"], "ALG-9");
}

/// ADT^A40 had no map (2 MRG in the unseen archives): each patient group
/// links its survivor (PID) to the Patient it retires (MRG-1), which is
/// an amendment (`active: false`, `replaced-by`), never a replacement.
#[test]
fn a40_links_each_survivor_to_the_patient_it_retires() {
    let resources = mapped(
        "MSH|^~\\&|ADT|FAC|||202401011200||ADT^A40^ADT_A39|M1|P|2.5.1\r\
         EVN|A40|202401011200\r\
         PID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\r\
         MRG|456^^^HOSP^MR\r\
         PID|1||789^^^HOSP^MR||Roe^Ann||19700101|F\r\
         MRG|790^^^HOSP^MR~791^^^HOSP^MR\r",
    );
    assert_valid(&resources);
    let patients: Vec<&MappedResource> = resources
        .iter()
        .filter(|r| r.resource_type == "Patient")
        .collect();
    assert_eq!(patients.len(), 4);
    let [survivor, retired, survivor2, retired2] = patients.as_slice() else {
        unreachable!()
    };
    assert!(!survivor.amends && !survivor2.amends);
    assert!(retired.amends && retired2.amends);
    assert_eq!(retired.identity.1, "456");
    assert_eq!(retired2.identity.1, "790");
    assert_eq!(retired2.resource["identifier"].as_array().unwrap().len(), 2);
    assert_eq!(retired.resource["active"], false);
    assert!(
        retired.resource.get("name").is_none(),
        "only what the merge says"
    );
    assert_eq!(survivor.resource["link"][0]["type"], "replaces");
    assert_eq!(
        survivor.resource["link"][0]["other"]["reference"],
        retired.full_url
    );
    assert_eq!(retired.resource["link"][0]["type"], "replaced-by");
    assert_eq!(
        retired.resource["link"][0]["other"]["reference"],
        survivor.full_url
    );
    assert_eq!(
        survivor2.resource["link"][0]["other"]["reference"],
        retired2.full_url
    );
    assert_eq!(survivor.resource["name"][0]["family"], "Doe");
}

#[test]
fn a40_without_mrg_or_merging_a_patient_into_itself_is_refused_with_why() {
    let fails = |text: &str| {
        let message = Message::parse(text.as_bytes(), 0).unwrap();
        map_message(&message, &MapOptions::default()).unwrap_err().0
    };
    let no_mrg = fails(
        "MSH|^~\\&|ADT|FAC|||202401011200||ADT^A40|M1|P|2.5.1\r\
         PID|1||123^^^HOSP^MR||Doe^Jane\r",
    );
    assert!(no_mrg.contains("group 1 has no MRG"), "{no_mrg}");
    let itself = fails(
        "MSH|^~\\&|ADT|FAC|||202401011200||ADT^A40|M1|P|2.5.1\r\
         PID|1||123^^^HOSP^MR||Doe^Jane\r\
         MRG|123^^^HOSP^MR\r",
    );
    assert!(itself.contains("nothing to merge"), "{itself}");
}

/// A29 and A23 delete nothing: they mark the Patient inactive and the
/// Encounter entered-in-error, as amendments of what is stored.
#[test]
fn deletions_mark_instead_of_deleting() {
    let person = mapped(
        "MSH|^~\\&|ADT|FAC|||202401011200||ADT^A29^ADT_A21|D1|P|2.5.1\r\
         PID|1||123^^^HOSP^MR||Doe^Jane\r\
         PV1|1|I|||||||||||||||||V1^^^HOSP\r",
    );
    assert_eq!(person.len(), 1);
    assert!(person[0].amends);
    assert_eq!(person[0].resource["active"], false);
    assert!(person[0].resource.get("name").is_none());
    let visit = mapped(
        "MSH|^~\\&|ADT|FAC|||202401011200||ADT^A23^ADT_A21|D2|P|2.5.1\r\
         PID|1||123^^^HOSP^MR||Doe^Jane\r\
         PV1|1|I|||||||||||||||||V1^^^HOSP\r",
    );
    assert_eq!(visit.len(), 1);
    assert!(visit[0].amends);
    assert_eq!(visit[0].resource_type, "Encounter");
    assert_eq!(visit[0].identity.1, "V1");
    assert_eq!(visit[0].resource["status"], "entered-in-error");
    // the same identity the visit's admission wrote
    let admitted = mapped(
        "MSH|^~\\&|ADT|FAC|||202401011200||ADT^A01|D0|P|2.5.1\r\
         PID|1||123^^^HOSP^MR||Doe^Jane\r\
         PV1|1|I|||||||||||||||||V1^^^HOSP\r",
    );
    let encounter = admitted
        .iter()
        .find(|r| r.resource_type == "Encounter")
        .unwrap();
    assert_eq!(encounter.identity, visit[0].identity);
    assert_eq!(
        encounter.resource["identifier"][0],
        visit[0].resource["identifier"][0]
    );
}

/// A25–A27 (cancel a pending discharge, transfer, admission) and A41
/// (merge account) were skipped; they update the patient and the visit.
#[test]
fn cancelled_pending_events_and_account_merges_are_mapped() {
    for (event, status) in [
        ("A25", "in-progress"),
        ("A26", "in-progress"),
        ("A27", "cancelled"),
    ] {
        let resources = mapped(&format!(
            "MSH|^~\\&|ADT|FAC|||202401011200||ADT^{event}|C1|P|2.5.1\r\
             PID|1||123^^^HOSP^MR||Doe^Jane\r\
             PV1|1|I|||||||||||||||||V1^^^HOSP\r"
        ));
        assert_valid(&resources);
        assert_eq!(
            of_type(&resources, "Encounter")[0]["status"],
            status,
            "{event}"
        );
    }
    let account = mapped(
        "MSH|^~\\&|ADT|FAC|||202401011200||ADT^A41^ADT_A39|C2|P|2.5.1\r\
         PID|1||123^^^HOSP^MR||Doe^Jane\r\
         MRG|||ACC1^^^HOSP\r\
         PV1|1|I|||||||||||||||||V1^^^HOSP\r",
    );
    assert_eq!(of_type(&account, "Patient").len(), 1);
    assert!(
        of_type(&account, "Encounter").is_empty(),
        "A41 is about accounts"
    );
    assert!(account.iter().all(|r| !r.amends));
}

/// GT1 (4 in the unseen archives) and PV2 (11) were dropped: a guarantor
/// who is not the patient is a RelatedPerson with the GUAR role; PV2 gives
/// the visit its reason, length and priority.
#[test]
fn gt1_guarantors_and_pv2_visit_details_are_kept() {
    let resources = mapped(
        "MSH|^~\\&|ADT|FAC|||202401011200||ADT^A01|G1|P|2.5.1\r\
         PID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\r\
         PV1|1|I|||||||||||||||||V1^^^HOSP\r\
         PV2|||CP^Chest pain^L||||||||3||||||||||||||R\r\
         GT1|1|G77^^^HOSP|Doe^John||1 Main St^^Town^ST^12345|555-1234||19780202|M||SPO^Spouse^HL70063\r\
         GT1|2||Doe^Jane||||||||SEL^Self^HL70063\r",
    );
    assert_valid(&resources);
    let guarantors = of_type(&resources, "RelatedPerson");
    assert_eq!(guarantors.len(), 1, "a self-guarantor adds nothing");
    let g = guarantors[0];
    assert_eq!(g["relationship"][0]["coding"][0]["code"], "GUAR");
    assert_eq!(g["name"][0]["family"], "Doe");
    assert_eq!(g["gender"], "male");
    assert_eq!(g["identifier"][1]["value"], "G77");
    let encounter = of_type(&resources, "Encounter")[0];
    assert_eq!(encounter["reasonCode"][0]["coding"][0]["code"], "CP");
    assert_eq!(encounter["length"]["value"], 3);
    assert_eq!(encounter["priority"]["coding"][0]["code"], "R");
}

/// OBX and IN1 in orders, PV1 and OBX before any RXA in VXU were
/// dropped: an order's OBX is its supporting information, its IN1 a
/// Coverage; a VXU's visit is the immunizations' encounter, and its
/// patient-level OBX an Observation of that visit.
#[test]
fn order_and_vaccination_context_segments_are_kept() {
    let order = mapped(
        "MSH|^~\\&|EHR|FAC|||202401011200||OML^O21|O1|P|2.5.1\r\
         PID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\r\
         IN1|1|PLAN1|PAYOR1^^^HOSP|Acme Health||||||||||||||||||||||||||||||||POL9\r\
         ORC|NW|PL1^EHR\r\
         OBR|1|PL1^EHR||CBC^Blood count^L\r\
         OBX|1|NM|HT^Height^L||170|cm\r\
         NTE|1||measured today\r",
    );
    assert_valid(&order);
    let request = of_type(&order, "ServiceRequest")[0];
    let obs: Vec<&MappedResource> = order
        .iter()
        .filter(|r| r.resource_type == "Observation")
        .collect();
    assert_eq!(obs.len(), 1);
    assert_eq!(request["supportingInfo"][0]["reference"], obs[0].full_url);
    assert_eq!(obs[0].resource["note"][0]["text"], "measured today");
    assert!(request.get("note").is_none(), "the NTE is the OBX's");
    assert_eq!(of_type(&order, "Coverage").len(), 1);

    let vxu = mapped(
        "MSH|^~\\&|EHR|FAC|||202401011200||VXU^V04|V1|P|2.5.1\r\
         PID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\r\
         PV1|1|R|||||||||||||||||V9^^^HOSP\r\
         OBX|1|CE|64994-7^Eligibility^LN||V02^VFC eligible^HL70064\r\
         ORC|RE||IZ-1^EHR\r\
         RXA|0|1|20240101||08^HepB^CVX|0.5|mL\r",
    );
    assert_valid(&vxu);
    let encounter = vxu.iter().find(|r| r.resource_type == "Encounter").unwrap();
    let immunization = of_type(&vxu, "Immunization")[0];
    assert_eq!(immunization["encounter"]["reference"], encounter.full_url);
    let eligibility = of_type(&vxu, "Observation")[0];
    assert_eq!(eligibility["encounter"]["reference"], encounter.full_url);
    assert!(eligibility.get("partOf").is_none());
}

/// ROL outside a visit (6 in the unseen archives, after PID) was dropped:
/// it is the patient's CareTeam; after PV1 it stays the visit's.
#[test]
fn rol_before_the_visit_is_the_patients_care_team() {
    let resources = mapped(
        "MSH|^~\\&|ADT|FAC|||202401011200||ADT^A01|R1|P|2.5.1\r\
         PID|1||123^^^HOSP^MR||Doe^Jane||19800101|F\r\
         ROL|1|AD|PP^Primary care provider^HL70443|D77^Who^Dr|20200101\r\
         PV1|1|I|||||||||||||||||V1^^^HOSP\r\
         ROL|2|AD|AT^Attending^HL70443|D88^Else^Dr\r",
    );
    assert_valid(&resources);
    let teams = of_type(&resources, "CareTeam");
    assert_eq!(teams.len(), 1);
    let member = &teams[0]["participant"][0];
    assert_eq!(member["role"][0]["coding"][0]["code"], "PP");
    assert_eq!(member["member"]["identifier"]["value"], "D77");
    assert_eq!(member["period"]["start"], "2020-01-01");
    let encounter = of_type(&resources, "Encounter")[0];
    let people = encounter["participant"].as_array().unwrap();
    assert_eq!(people.len(), 1, "{people:?}");
    assert_eq!(people[0]["individual"]["identifier"]["value"], "D88");
}
