//! The PostgreSQL connector's `schema:` (issue 20: an OMOP database keeps
//! its tables in a `cdm` schema, and every table had to be written
//! `cdm.person`).

use fhirlift_tests::pg::TestDb;
use fhirlift_tests::{fhirlift, scratch};

#[test]
fn schema_lets_tables_of_another_schema_be_named_alone() {
    let db = TestDb::create("schema");
    db.execute(
        "CREATE SCHEMA cdm;
         CREATE TABLE cdm.person (person_id int PRIMARY KEY, gender text);
         INSERT INTO cdm.person VALUES (1, 'F'), (2, 'M');",
    );
    let dir = scratch("pg-schema");
    std::fs::write(dir.join("pg.url"), &db.url).unwrap();
    let write = |schema: &str| {
        let path = dir.join("migration.yaml");
        std::fs::write(
            &path,
            format!(
                "source: {{ connector: postgres, url_file: pg.url{schema} }}\n\
                 streams:\n  people:\n    from: person\n    key: person_id\n    emit:\n      \
                 - resourceType: Patient\n        identifier: [{{ system: \"http://s/p\", value: \"{{{{ person_id }}}}\" }}]\n"
            ),
        )
        .unwrap();
        path
    };
    // without it, `person` is looked up in public: not there
    let config = write("");
    let check = fhirlift(["check", "-c", config.to_str().unwrap()]);
    assert_ne!(check.code, 0, "{}{}", check.stdout, check.stderr);
    // with it, the same name reads cdm.person
    let config = write(", schema: cdm");
    let check = fhirlift(["check", "-c", config.to_str().unwrap()]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    assert!(
        check.stdout.contains("2 resources planned"),
        "{}",
        check.stdout
    );
    // a list or a qualified name is refused by name
    let config = write(", schema: \"cdm.person\"");
    let check = fhirlift(["check", "-c", config.to_str().unwrap()]);
    assert!(check.stderr.contains("source.schema"), "{}", check.stderr);
}
