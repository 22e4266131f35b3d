//! R4's element names as JSON Schema (draft-07), for editors: one
//! definition per complex, backbone and resource type listing its elements
//! (a choice element by each of its names: `valueString`,
//! `valueQuantity`, ...), every other name refused
//! (`additionalProperties: false`), so that a YAML language server
//! completes element names and marks a misspelled one.
//!
//! Only names are checked, never values: a definition has no `type`, so
//! `properties` apply to an object, `items` (the definition again) to each
//! item of a list, and any other value (a template's `"{{ … }}"` string)
//! passes. A primitive element takes anything; a primitive's `_element`
//! sibling is any name starting with `_`. Definitions refer to each other
//! by `$ref` (`#/definitions/Coding`), never inlined.
//!
//! A template language adds keys of its own ([`TemplateKeys`]); the
//! definitions carry them beside the elements.

use serde_json::{Map, Value, json};

use crate::definitions::{Definitions, Kind};

/// Where the definitions sit in the schema document; `$ref`s point there.
pub const DEFINITIONS: &str = "#/definitions/";

/// The definition any resource nested in another refers to (`contained`,
/// `Bundle.entry.resource`): [`ANY_RESOURCE`] without the keys only an
/// emitted resource takes.
pub const RESOURCE: &str = "Resource";

/// The definition that picks a resource's definition by its
/// `resourceType` (one of the concrete resource types); for an object
/// only, so a schema referring to it in `allOf` gives its own `items`.
pub const ANY_RESOURCE: &str = "any-resource";

/// Keys besides the elements, with their schemas.
#[derive(Debug, Clone, Default)]
pub struct TemplateKeys {
    /// Any object may hold them (a template's `when:`). An element of the
    /// same name wins (`Timing.repeat.when`).
    pub object: Map<String, Value>,
    /// An emitted resource may hold them, a nested one not (`as:`,
    /// `write:`).
    pub resource: Map<String, Value>,
}

/// The definitions of every complex, backbone and resource type by name,
/// plus [`ANY_RESOURCE`] and [`RESOURCE`]; abstract types (`Resource`,
/// `DomainResource`, `Element`, `BackboneElement`) are left out.
pub fn definitions(defs: &Definitions, keys: &TemplateKeys) -> Map<String, Value> {
    let mut out = Map::new();
    let resources: Vec<&str> = resource_types(defs).collect();
    for (name, def) in &defs.types {
        let is_resource = def.kind == Kind::Resource;
        if def.kind == Kind::Primitive || (is_resource && !resources.contains(&name.as_str())) {
            continue;
        }
        if matches!(name.as_str(), "Element" | "BackboneElement") {
            continue;
        }
        let mut properties = Map::new();
        if is_resource {
            properties.insert("resourceType".into(), json!({ "const": name }));
        }
        for element in &def.elements {
            for (key, type_name) in element.json_names() {
                properties.insert(key, of_type(defs, type_name));
            }
        }
        for (key, schema) in &keys.object {
            properties.entry(key).or_insert_with(|| schema.clone());
        }
        if is_resource {
            for (key, schema) in &keys.resource {
                properties.entry(key).or_insert_with(|| schema.clone());
            }
        }
        let mut schema = json!({
            "description": describe(name, def.kind),
            "properties": properties,
            // a primitive's id and extensions
            "patternProperties": { "^_": { "$ref": format!("{DEFINITIONS}primitive-extension") } },
            "additionalProperties": false,
            "items": { "$ref": format!("{DEFINITIONS}{name}") },
        });
        if is_resource {
            schema["required"] = json!(["resourceType"]);
        }
        out.insert(name.clone(), schema);
    }
    out.insert(
        "primitive-extension".into(),
        json!({
            "description": "a primitive element's id and extensions",
            "properties": {
                "id": {},
                "extension": { "$ref": format!("{DEFINITIONS}Extension") },
            },
            "additionalProperties": false,
            "items": { "$ref": format!("{DEFINITIONS}primitive-extension") },
        }),
    );
    let dispatch: Vec<Value> = resources
        .iter()
        .map(|name| {
            json!({
                // an object only: a list's items are picked one by one
                "if": {
                    "type": "object",
                    "properties": { "resourceType": { "const": name } },
                    "required": ["resourceType"],
                },
                "then": { "$ref": format!("{DEFINITIONS}{name}") },
            })
        })
        .collect();
    out.insert(
        ANY_RESOURCE.into(),
        json!({
            "description": "a FHIR R4 resource: its resourceType picks its elements",
            "required": ["resourceType"],
            "properties": { "resourceType": { "enum": resources } },
            // no `items`: a list is picked through by whoever refers here
            "allOf": dispatch,
        }),
    );
    let refused: Map<String, Value> = keys
        .resource
        .keys()
        .map(|k| (k.clone(), Value::Bool(false)))
        .collect();
    out.insert(
        RESOURCE.into(),
        json!({
            "description": "a resource inside another (contained, a bundle's entry)",
            "allOf": [{ "$ref": format!("{DEFINITIONS}{ANY_RESOURCE}") }],
            "properties": refused,
            "items": { "$ref": format!("{DEFINITIONS}{RESOURCE}") },
        }),
    );
    out
}

/// The concrete resource types, sorted.
pub fn resource_types(defs: &Definitions) -> impl Iterator<Item = &str> {
    defs.types
        .iter()
        .filter(|(name, def)| {
            def.kind == Kind::Resource && !matches!(name.as_str(), "Resource" | "DomainResource")
        })
        .map(|(name, _)| name.as_str())
}

/// The schema of an element of this type: its definition, or anything for
/// a primitive.
fn of_type(defs: &Definitions, type_name: &str) -> Value {
    match defs.get(type_name).map(|d| d.kind) {
        Some(Kind::Resource) => json!({ "$ref": format!("{DEFINITIONS}{RESOURCE}") }),
        Some(Kind::Complex | Kind::Backbone) => {
            json!({ "$ref": format!("{DEFINITIONS}{type_name}") })
        }
        Some(Kind::Primitive) | None => json!({}),
    }
}

fn describe(name: &str, kind: Kind) -> String {
    match kind {
        Kind::Resource => format!("the FHIR R4 resource {name}"),
        Kind::Backbone => format!("the elements of {name}"),
        _ => format!("the FHIR R4 data type {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions::r4;

    fn properties<'a>(defs: &'a Map<String, Value>, name: &str) -> &'a Map<String, Value> {
        defs[name]["properties"].as_object().unwrap()
    }

    #[test]
    fn choice_elements_are_named_by_type_and_datatypes_are_referred_to() {
        let keys = TemplateKeys {
            object: [("when".to_owned(), json!({ "type": "string" }))]
                .into_iter()
                .collect(),
            resource: [("as".to_owned(), json!({ "type": "string" }))]
                .into_iter()
                .collect(),
        };
        let defs = definitions(r4(), &keys);
        let observation = properties(&defs, "Observation");
        for name in [
            "valueString",
            "valueQuantity",
            "effectiveDateTime",
            "as",
            "when",
        ] {
            assert!(observation.contains_key(name), "{name}");
        }
        assert!(!observation.contains_key("value[x]"));
        assert_eq!(
            observation["code"],
            json!({ "$ref": "#/definitions/CodeableConcept" })
        );
        assert_eq!(
            observation["resourceType"],
            json!({ "const": "Observation" })
        );
        assert_eq!(
            observation["component"],
            json!({ "$ref": "#/definitions/Observation.component" })
        );
        assert!(properties(&defs, "Coding").contains_key("system"));
        assert!(!properties(&defs, "Coding").contains_key("as"));
        // an element named like a template key stays the element
        assert_eq!(properties(&defs, "Timing.repeat")["when"], json!({}));
        // a nested resource refuses what only an emitted one takes
        assert_eq!(defs[RESOURCE]["properties"]["as"], json!(false));
        assert_eq!(
            properties(&defs, "Bundle.entry")["resource"],
            json!({ "$ref": "#/definitions/Resource" })
        );
        let types = defs[ANY_RESOURCE]["properties"]["resourceType"]["enum"]
            .as_array()
            .unwrap();
        assert!(types.contains(&json!("Patient")));
        assert!(!types.contains(&json!("DomainResource")));
        assert_eq!(
            types.len(),
            defs[ANY_RESOURCE]["allOf"].as_array().unwrap().len()
        );
        // every $ref points at a definition
        let text = serde_json::to_string(&defs).unwrap();
        for part in text.split("\"$ref\":\"#/definitions/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(defs.contains_key(name), "{name}");
        }
    }
}
