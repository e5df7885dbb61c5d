//! Which objects a list or watch sees: the namespace from the path, `labelSelector` and
//! `fieldSelector`, parsed with the API server's grammar (the parts of it kube and kubectl send).

use serde_json::Value;

/// The objects a request asks for.
#[derive(Debug, Default)]
pub(super) struct Filter {
    namespace: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

#[derive(Debug)]
enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

#[derive(Debug)]
struct FieldReq {
    /// `metadata.name`, `metadata.namespace`, or `type` (Secrets).
    path: &'static str,
    value: String,
    equal: bool,
}

impl Filter {
    /// Parses the selectors; an error is the message of a 400 answer.
    pub(super) fn new(namespace: Option<&str>, labels: Option<&str>, fields: Option<&str>) -> Result<Filter, String> {
        Ok(Filter {
            namespace: namespace.map(str::to_owned),
            labels: terms(labels.unwrap_or("")).map(label_req).collect::<Result<_, _>>()?,
            fields: terms(fields.unwrap_or("")).map(field_req).collect::<Result<_, _>>()?,
        })
    }

    pub(super) fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        if let Some(ns) = &self.namespace
            && meta["namespace"].as_str() != Some(ns)
        {
            return false;
        }
        let label = |k: &str| meta["labels"][k].as_str();
        let labels_match = self.labels.iter().all(|req| match req {
            LabelReq::Eq(k, v) => label(k) == Some(v),
            LabelReq::Ne(k, v) => label(k) != Some(v),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
        });
        labels_match
            && self.fields.iter().all(|req| {
                let field = match req.path.strip_prefix("metadata.") {
                    Some(key) => meta[key].as_str(),
                    None => obj[req.path].as_str(),
                }
                .unwrap_or("");
                (field == req.value) == req.equal
            })
    }
}

/// The comma-separated terms of a selector, keeping the commas inside `in (a,b)` sets.
fn terms(selector: &str) -> impl Iterator<Item = &str> {
    let mut depth = 0u32;
    selector
        .split(move |c| {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                _ => {}
            }
            c == ',' && depth == 0
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn label_req(term: &str) -> Result<LabelReq, String> {
    let bad = || format!("unable to parse requirement: {term:?}");
    if let Some(key) = term.strip_prefix('!') {
        return Ok(LabelReq::NotExists(key.trim().to_owned()));
    }
    if let Some((head, set)) = term.split_once('(') {
        let set = set.strip_suffix(')').ok_or_else(bad)?;
        let values = set.split(',').map(|v| v.trim().to_owned()).collect();
        let mut words = head.split_whitespace();
        let (Some(key), Some(op), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad());
        };
        return match op {
            "in" => Ok(LabelReq::In(key.to_owned(), values)),
            "notin" => Ok(LabelReq::NotIn(key.to_owned(), values)),
            _ => Err(bad()),
        };
    }
    let (key, value, equal) = split_op(term);
    match value {
        Some(v) if equal => Ok(LabelReq::Eq(key.to_owned(), v.to_owned())),
        Some(v) => Ok(LabelReq::Ne(key.to_owned(), v.to_owned())),
        None if !key.is_empty() && !key.contains(char::is_whitespace) => Ok(LabelReq::Exists(key.to_owned())),
        None => Err(bad()),
    }
}

fn field_req(term: &str) -> Result<FieldReq, String> {
    let (key, value, equal) = split_op(term);
    let path = match key {
        "metadata.name" => "metadata.name",
        "metadata.namespace" => "metadata.namespace",
        "type" => "type",
        _ => return Err(format!("field label not supported: {key}")),
    };
    let value = value.ok_or_else(|| format!("invalid selector: {term:?}"))?;
    Ok(FieldReq {
        path,
        value: value.to_owned(),
        equal,
    })
}

/// `k!=v` → (k, Some(v), false); `k=v` and `k==v` → (k, Some(v), true); `k` → (k, None, true).
fn split_op(term: &str) -> (&str, Option<&str>, bool) {
    if let Some((k, v)) = term.split_once("!=") {
        (k.trim(), Some(v.trim()), false)
    } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        (k.trim(), Some(v.trim()), true)
    } else {
        (term, None, true)
    }
}
