//! `fhirlift-gen --patients N [--conditions-each K] DIR`: the example's
//! tables at any size, and a migration file beside them. Run through
//! `cargo xtask gen`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut patients = 1000u64;
    let mut seed = 42u64;
    let mut conditions_each = None;
    let mut dir = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--patients" => {
                patients = it
                    .next()
                    .and_then(|n| n.replace('_', "").parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--conditions-each" => {
                conditions_each = Some(
                    it.next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| usage()),
                )
            }
            "--seed" => {
                seed = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            other if !other.starts_with('-') => dir = Some(std::path::PathBuf::from(other)),
            _ => usage(),
        }
    }
    let dir = dir.unwrap_or_else(|| usage());
    match fhirlift_tests::datagen::write_example_shaped(&dir, patients, seed, conditions_each) {
        Ok(g) => println!(
            "wrote {} patients, {} conditions, {} encounters to {}/data, and {}/migration.yaml",
            g.patients,
            g.conditions,
            g.encounters,
            dir.display(),
            dir.display()
        ),
        Err(e) => {
            eprintln!("error: cannot write to {}: {e}", dir.display());
            std::process::exit(1);
        }
    }
}

fn usage() -> ! {
    eprintln!("usage: fhirlift-gen --patients N [--conditions-each K] [--seed S] DIR");
    std::process::exit(1);
}
