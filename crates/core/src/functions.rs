//! Expression functions a connector adds for its own kind of value, and the
//! opaque values they read.
//!
//! A connector whose records carry something richer than columns (the
//! hl7v2 connector's parsed message) puts it in a record as
//! [`Value::Opaque`](crate::Value::Opaque) and registers the functions that
//! read it with [`register_functions!`](crate::register_functions). The
//! template engine knows neither the format nor the functions: it offers
//! every registered name to expressions and hands each call the record's
//! opaque value, the `for_each` part the call stands on, and the family's
//! settings for the stream.
//!
//! API boundary: arguments and results are JSON values; a
//! [`FunctionError`] is a message about the record or the call.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// A source-format value a record carries whole (a parsed HL7 v2 message).
pub trait OpaqueValue: Any + Send + Sync + fmt::Debug {
    /// The value as text (the raw message): what `{{ column }}` renders.
    fn text(&self) -> &str;
    /// The positions of its parts named `name`, in order: what
    /// `for_each: NAME` iterates over (HL7 segments). None by default.
    fn parts(&self, _name: &str) -> Vec<usize> {
        Vec::new()
    }
    /// For the functions that read it: downcast to the connector's type.
    fn as_any(&self) -> &dyn Any;
}

/// A shared [`OpaqueValue`]; two are equal when they are one value or their
/// texts are equal.
#[derive(Debug, Clone)]
pub struct Opaque(pub Arc<dyn OpaqueValue>);

impl Opaque {
    pub fn new(value: impl OpaqueValue) -> Opaque {
        Opaque(Arc::new(value))
    }

    /// The value as the connector's type, if it is one.
    pub fn downcast<T: OpaqueValue>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }
}

impl PartialEq for Opaque {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.text() == other.0.text()
    }
}

/// Why a call or a family's settings failed: a message for the user. It
/// may quote the record's data, so it goes to the rejects file, never to
/// logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FunctionError(pub String);

impl From<String> for FunctionError {
    fn from(message: String) -> Self {
        FunctionError(message)
    }
}

impl From<&str> for FunctionError {
    fn from(message: &str) -> Self {
        FunctionError(message.to_owned())
    }
}

/// Per-stream settings of a function family, read once when a mapping
/// compiles (e.g. the HL7 time zone from the mapping's vars).
pub type FunctionSettings = Arc<dyn Any + Send + Sync>;

/// What one call sees besides its arguments.
pub struct FunctionCall<'a> {
    /// The record's opaque value, if it holds one.
    pub value: Option<&'a Opaque>,
    /// The part a `for_each` iteration stands on.
    pub part: Option<usize>,
    /// The family's settings for this stream ([`ExpressionFunctions::settings`]).
    pub settings: &'a FunctionSettings,
}

/// A family of functions for expressions (`hl7(...)`, `hl7_name(...)`...).
pub trait ExpressionFunctions: Send + Sync {
    /// The names it adds; they must not clash with another family's.
    fn names(&self) -> &'static [&'static str];
    /// Its settings for one stream, from the mapping's `vars:`; an error
    /// names the var and says how to write it (a `check` error).
    fn settings(
        &self,
        vars: &[(String, serde_json::Value)],
    ) -> Result<FunctionSettings, FunctionError>;
    /// Calls the function `name` (one of [`names`](Self::names)).
    fn call(
        &self,
        name: &str,
        call: &FunctionCall<'_>,
        args: &[serde_json::Value],
    ) -> Result<serde_json::Value, FunctionError>;
}

/// One registered family of expression functions.
pub struct FunctionRegistration {
    /// The connector (or format) it serves, for messages.
    pub family: &'static str,
    pub functions: &'static dyn ExpressionFunctions,
}

inventory::collect!(FunctionRegistration);

/// Every registered family.
pub fn registered() -> impl Iterator<Item = &'static FunctionRegistration> {
    inventory::iter::<FunctionRegistration>.into_iter()
}

/// Registers a family of expression functions:
///
/// ```ignore
/// fhirlift_core::register_functions! {
///     family: "hl7v2",
///     functions: &Hl7Functions,
/// }
/// ```
#[macro_export]
macro_rules! register_functions {
    (family: $family:expr, functions: $functions:expr $(,)?) => {
        $crate::inventory::submit! {
            $crate::functions::FunctionRegistration {
                family: $family,
                functions: $functions,
            }
        }
    };
}
