//! Connector plugins loaded at run time: the example `fixed-width` plugin
//! migrates exactly like a built-in connector (compared with `csv` on the
//! same data), and bad plugins (wrong ABI version, a taken name, a panic,
//! malformed output) are refused or reported while fhirlift goes on.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use fhirlift_sandbox::SandboxConfig;
use fhirlift_tests::{Outcome, TestServer, fhirlift, scratch, workspace};
use serde_json::Value;

use crate::support::{migrate, report, total};

const SRC: &str = "http://your-source-system.com";

/// The plugin libraries, built once per test run.
struct Built {
    fixed_width: PathBuf,
    test_bad: PathBuf,
    wrong_abi: PathBuf,
    named_csv: PathBuf,
    malformed: PathBuf,
}

fn library(dir: &Path, name: &str) -> PathBuf {
    let file = dir.join(format!(
        "{}{name}.{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_EXTENSION
    ));
    assert!(file.is_file(), "{} was not built", file.display());
    file
}

/// Builds the plugin crates with the test binary's profile, into the
/// same target directory (`cargo test --workspace` has usually built
/// them already: then this is quick).
fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps/")
            .to_path_buf();
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(other) => other.to_owned(),
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(workspace())
            .args(["build", "--profile", &profile])
            .args(["-p", "fhirlift-plugin-fixed-width"])
            .args(["-p", "fhirlift-plugin-test-bad", "--lib", "--examples"])
            .output()
            .expect("cargo runs");
        assert!(
            out.status.success(),
            "building the plugins failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let examples = profile_dir.join("examples");
        Built {
            fixed_width: library(&profile_dir, "fhirlift_plugin_fixed_width"),
            test_bad: library(&profile_dir, "fhirlift_plugin_test_bad"),
            wrong_abi: library(&examples, "wrong_abi"),
            named_csv: library(&examples, "named_csv"),
            malformed: library(&examples, "malformed"),
        }
    })
}

/// Copies a library into `dir` under `name` (a copy, not a link: two
/// copies are two libraries for the loader).
fn place(library: &Path, dir: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let to = dir.join(format!(
        "{}{name}.{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_EXTENSION
    ));
    std::fs::copy(library, &to).unwrap();
    to
}

fn example() -> PathBuf {
    workspace().join("examples/fixed-width")
}

/// The fixed-width example in `dir`: its migration, its data, and the
/// plugin in `plugins/` beside them (the default folder).
fn fixed_width_example(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::copy(
        example().join("data/patients.txt"),
        dir.join("data/patients.txt"),
    )
    .unwrap();
    std::fs::copy(example().join("migration.yaml"), dir.join("migration.yaml")).unwrap();
    place(&built().fixed_width, &dir.join("plugins"), "fixed_width");
    dir.join("migration.yaml")
}

/// The same data and mapping for the built-in `csv` connector: each line
/// cut by the layout into a CSV row (the short line keeps only the fields
/// it has, which `csv` rejects like `fixed-width` does).
fn csv_twin(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let layout = [(0, 8), (8, 15), (23, 12), (35, 8), (43, 1)];
    let mut csv = String::from("mrn,family,given,birth_date,sex\n");
    let text = std::fs::read_to_string(example().join("data/patients.txt")).unwrap();
    for line in text.lines() {
        let chars: Vec<char> = line.chars().collect();
        let fields: Vec<String> = layout
            .iter()
            .filter(|(start, width)| start + width <= chars.len())
            .map(|(start, width)| {
                chars[*start..start + width]
                    .iter()
                    .collect::<String>()
                    .trim_end()
                    .to_owned()
            })
            .collect();
        let fields = if fields.len() < layout.len() {
            vec!["FW0099".to_owned(), "Short".to_owned()]
        } else {
            fields
        };
        csv.push_str(&fields.join(","));
        csv.push('\n');
    }
    std::fs::write(dir.join("data/patients.csv"), csv).unwrap();
    let yaml = std::fs::read_to_string(example().join("migration.yaml")).unwrap();
    let yaml: String = yaml
        .lines()
        .filter(|l| !l.contains("columns:") && !l.contains("{ name:"))
        .map(|l| {
            l.replace("connector: fixed-width", "connector: csv")
                .replace("patients.txt", "patients.csv")
                + "\n"
        })
        .collect();
    std::fs::write(dir.join("migration.yaml"), yaml).unwrap();
    dir.join("migration.yaml")
}

fn stream(report: &Value) -> &Value {
    &report["streams"][0]
}

/// Every stored Patient, without what the server assigns.
fn patients(server: &TestServer) -> Vec<Value> {
    let mut all: Vec<Value> = server.sandbox.with_store(|store| {
        store
            .resources("Patient")
            .into_iter()
            .map(|p| {
                let mut p = p.clone();
                let o = p.as_object_mut().unwrap();
                o.remove("id");
                o.remove("meta");
                p
            })
            .collect()
    });
    all.sort_by_key(|p| {
        p["identifier"][0]["value"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    });
    all
}

fn entries(server: &TestServer) -> u64 {
    server.sandbox.stats().entries.load(Ordering::Relaxed)
}

#[test]
fn the_example_plugin_is_listed_and_migrates_like_a_built_in() {
    let dir = scratch("plugin-fixed-width");
    let config = fixed_width_example(&dir);

    let listed = fhirlift([
        "connectors".into(),
        "--plugins".into(),
        dir.join("plugins").into_os_string(),
    ]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert!(!listed.stderr.contains("warning"), "{}", listed.stderr);
    let line = listed
        .stdout
        .lines()
        .find(|l| l.starts_with("fixed-width "))
        .unwrap_or_else(|| panic!("fixed-width is listed:\n{}", listed.stdout));
    assert!(
        line.contains("plugin (") && line.contains("fixed_width") && line.contains(" 0.1.0 "),
        "{line}"
    );

    let twin_dir = scratch("plugin-fixed-width-csv");
    let twin = csv_twin(&twin_dir);
    let plugin_server = TestServer::start(SandboxConfig::default());
    let csv_server = TestServer::start(SandboxConfig::default());

    // first run: the plugin (found in plugins/ beside the migration file)
    let first = migrate(&config, &plugin_server.url(), &dir, &[]);
    assert_eq!(first.code, 2, "{}{}", first.stdout, first.stderr);
    let r = report(&dir);
    assert_eq!(stream(&r)["records"], 6);
    assert_eq!(stream(&r)["rejected"], 1);
    // every resource it maps is valid R4 (the one reject is a short line)
    assert_eq!(stream(&r)["invalid_records"], 0, "{r}");
    assert_eq!(total(&r, "created"), 5);
    let rejects = std::fs::read_to_string(dir.join("rejects.ndjson")).unwrap();
    assert_eq!(rejects.lines().count(), 1, "{rejects}");
    assert!(
        rejects.contains("patients.txt:4") && rejects.contains("the layout needs 44"),
        "{rejects}"
    );
    plugin_server.sandbox.with_store(|store| {
        assert_eq!(store.count("Patient"), 5);
        let p = store.find("Patient", &format!("{SRC}/mrn"), "FW0003");
        assert_eq!(p[0]["name"][0]["given"][0], "Élodie");
        assert_eq!(p[0]["birthDate"], "2001-09-09");
    });

    // the built-in csv connector on the same data: the same outcome
    let csv_first = migrate(&twin, &csv_server.url(), &twin_dir, &[]);
    assert_eq!(
        csv_first.code, 2,
        "{}{}",
        csv_first.stdout, csv_first.stderr
    );
    let c = report(&twin_dir);
    for field in [
        "records",
        "rejected",
        "resources",
        "written",
        "unchanged_records",
    ] {
        assert_eq!(stream(&r)[field], stream(&c)[field], "{field}");
    }
    assert_eq!(patients(&plugin_server), patients(&csv_server));

    // a re-run writes nothing: the ledger knows every record unchanged
    for (server, config, dir) in [
        (&plugin_server, &config, &dir),
        (&csv_server, &twin, &twin_dir),
    ] {
        let before = entries(server);
        let again = migrate(config, &server.url(), dir, &[]);
        assert_eq!(again.code, 2, "{}{}", again.stdout, again.stderr);
        let r = report(dir);
        assert_eq!(stream(&r)["unchanged_records"], 5, "{}", again.stdout);
        assert_eq!(stream(&r)["rejected"], 1);
        assert_eq!(total(&r, "created") + total(&r, "updated"), 0);
        assert_eq!(entries(server), before, "no entry sent on the re-run");
    }
    assert_eq!(patients(&plugin_server).len(), 5);
}

fn warnings(run: &Outcome) -> Vec<&str> {
    run.stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect()
}

#[test]
fn bad_plugins_are_refused_with_a_reason_and_the_good_ones_load() {
    let b = built();
    let dir = scratch("plugin-refused");
    let plugins = dir.join("plugins");
    // file name order is load order: the first fixed-width wins
    let first = place(&b.fixed_width, &plugins, "a_fixed_width");
    let second = place(&b.fixed_width, &plugins, "b_fixed_width_again");
    let wrong = place(&b.wrong_abi, &plugins, "c_wrong_abi");
    let impostor = place(&b.named_csv, &plugins, "d_named_csv");
    place(&b.test_bad, &plugins, "e_test_bad");
    let junk = plugins.join(format!("f_junk.{}", std::env::consts::DLL_EXTENSION));
    std::fs::write(&junk, b"not a shared library").unwrap();

    let run = fhirlift([
        "connectors".into(),
        "--plugins".into(),
        plugins.clone().into_os_string(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let listed = |name: &str| {
        run.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} is listed:\n{}", run.stdout))
            .to_owned()
    };
    assert!(listed("fixed-width").contains(&first.display().to_string()));
    assert!(listed("test-bad").contains("plugin ("));
    assert!(listed("csv").contains("built-in"), "the built-in csv stays");

    let w = warnings(&run);
    assert_eq!(w.len(), 4, "{}", run.stderr);
    let about = |file: &Path| {
        let name = file.display().to_string();
        w.iter()
            .find(|l| l.contains(&name))
            .unwrap_or_else(|| panic!("a warning about {name}:\n{}", run.stderr))
            .to_string()
    };
    let abi = about(&wrong);
    assert!(
        abi.contains("plugin ABI version 999") && abi.contains("speaks version 1"),
        "{abi}"
    );
    let dup = about(&second);
    assert!(
        dup.contains("\"fixed-width\" is taken") && dup.contains(&first.display().to_string()),
        "{dup}"
    );
    let csv = about(&impostor);
    assert!(
        csv.contains("\"csv\" is taken by the built-in connector"),
        "{csv}"
    );
    assert!(about(&junk).contains("cannot load the plugin"));

    // the same folder does not stop a migration that uses a good plugin
    let config = fixed_width_example(&dir.join("example"));
    let check = fhirlift([
        "check".into(),
        "-c".into(),
        config.into_os_string(),
        "--plugins".into(),
        plugins.into_os_string(),
    ]);
    assert_eq!(check.code, 2, "{}{}", check.stdout, check.stderr);
    assert!(
        check.stdout.contains("patients") && check.stdout.contains("Patient 5"),
        "{}",
        check.stdout
    );
}

/// A migration of one stream from `connector`, with `options` on it.
fn failing_migration(dir: &Path, connector: &str, options: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let yaml = format!(
        "source:\n  connector: {connector}\nstreams:\n  things:\n    from: t\n{options}    emit:\n      - resourceType: Patient\n        identifier:\n          - system: urn:test\n            value: \"{{{{ id }}}}\"\n"
    );
    std::fs::write(dir.join("migration.yaml"), yaml).unwrap();
    dir.join("migration.yaml")
}

fn dry_run(config: &Path, plugins: &Path) -> Outcome {
    let dir = config.parent().unwrap();
    fhirlift([
        "migrate".into(),
        "-c".into(),
        config.as_os_str().to_owned(),
        "--dry-run".into(),
        dir.join("out").into_os_string(),
        "--report".into(),
        dir.join("report.json").into_os_string(),
        "--plugins".into(),
        plugins.as_os_str().to_owned(),
    ])
}

#[test]
fn a_failing_plugin_fails_its_stream_with_a_clear_error_and_fhirlift_goes_on() {
    let b = built();
    let dir = scratch("plugin-failing");
    let plugins = dir.join("plugins");
    place(&b.test_bad, &plugins, "test_bad");
    place(&b.malformed, &plugins, "malformed");

    for (name, connector, options, expected) in [
        (
            "panic",
            "test-bad",
            "    fail: panic\n",
            "plugin test-bad: the plugin panicked in next_batch: boom in the reader",
        ),
        (
            "error",
            "test-bad",
            "    fail: error\n",
            "plugin test-bad: t key 3: the source went away",
        ),
        (
            "bad-value",
            "test-bad",
            "    fail: bad-value\n",
            "plugin test-bad: malformed output in batch 1, line 4: column \"id\": a value is",
        ),
        (
            "malformed",
            "test-malformed",
            "",
            "plugin test-malformed: malformed output in batch 2, line 2: not JSON",
        ),
    ] {
        let config = failing_migration(&dir.join(name), connector, options);
        let run = dry_run(&config, &plugins);
        assert_eq!(run.code, 2, "{name}: {}{}", run.stdout, run.stderr);
        let r: Value =
            serde_json::from_slice(&std::fs::read(dir.join(name).join("report.json")).unwrap())
                .unwrap();
        let failed = stream(&r)["failed"].as_str().unwrap_or_default();
        assert!(
            failed.contains(expected),
            "{name}: {failed}\n{}",
            run.stdout
        );
    }

    // a panic in `open` itself: caught in the plugin, reported, no abort
    let config = failing_migration(
        &dir.join("panic-open"),
        "test-bad",
        "    fail: panic-open\n",
    );
    let run = dry_run(&config, &plugins);
    assert_ne!(run.code, 0);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(
        all.contains("plugin test-bad: the plugin panicked in open: boom in open"),
        "{all}"
    );

    // a setting the plugin refuses is a check error naming the plugin
    let config = failing_migration(&dir.join("setting"), "test-bad", "    fail: setting\n");
    let check = fhirlift([
        "check".into(),
        "-c".into(),
        config.into_os_string(),
        "--plugins".into(),
        plugins.clone().into_os_string(),
    ]);
    assert_eq!(check.code, 1, "{}", check.stdout);
    assert!(
        check
            .stderr
            .contains("plugin test-bad: streams.things.fail: refused as asked"),
        "{}",
        check.stderr
    );

    // and this process still runs plugins that behave
    let config = failing_migration(&dir.join("fine"), "test-bad", "    records: 700\n");
    let run = dry_run(&config, &plugins);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let r: Value =
        serde_json::from_slice(&std::fs::read(dir.join("fine/report.json")).unwrap()).unwrap();
    assert_eq!(stream(&r)["records"], 700);
}

#[test]
fn source_settings_that_do_not_fit_the_plugins_config_schema_fail_check_by_name() {
    let dir = scratch("plugin-config-schema");
    let config = fixed_width_example(&dir);
    let yaml = std::fs::read_to_string(&config).unwrap().replace(
        "  path: data/\n",
        "  pth: data/\n  columns:\n    - { name: mrn, start: 0, width: \"8\" }\n",
    );
    std::fs::write(&config, yaml).unwrap();
    let check = fhirlift(["check".into(), "-c".into(), config.into_os_string()]);
    let said = format!("{}{}", check.stdout, check.stderr);
    assert_ne!(check.code, 0, "{said}");
    for wrong in [
        "plugin fixed-width: the settings do not fit its config_schema",
        "source.pth is not a setting of this plugin: did you mean `path`? its settings are columns, path",
        "source.columns[0].start must be at least 1",
        "source.columns[0].width must be an integer, not text",
    ] {
        assert!(said.contains(wrong), "{wrong:?} in\n{said}");
    }
}
