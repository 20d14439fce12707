//! Payload checks: what APNs would refuse in a payload's JSON, found before sending.
//! A payload must be a JSON object, nest at most [`MAX_DEPTH`] levels, and its `aps`
//! dictionary must have the types Apple documents. Keys outside `aps` are the app's
//! own; unknown keys inside `aps` are allowed (Apple adds keys).
//!
//! One pass finds the payload's depth and where its top-level `aps` is, so only `aps`
//! is parsed again; the check types keep nothing, so checking allocates nothing.
//!
//! ```
//! use apns::payload::{check, PayloadError};
//!
//! assert!(check(r#"{"aps":{"alert":{"title":"Hi"},"badge":3},"order":42}"#).is_ok());
//! let e = check(r#"{"aps":{"badge":"three"}}"#).unwrap_err();
//! assert!(e.to_string().starts_with("payload.aps.badge: invalid type"), "{e}");
//! assert_eq!(check("[1]"), Err(PayloadError::NotObject));
//! ```

use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// Why a payload would be refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload must be a JSON object")]
    NotObject,
    #[error("payload nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// A field of `aps` has the wrong type or value; the text names its path
    /// (`payload.aps.badge: invalid type: string "3", expected u32`).
    #[error("{0}")]
    Aps(String),
    /// The payload lacks what its push type needs, or has what it cannot have (the
    /// text names the field: `payload.aps.event is required for push type liveactivity`).
    #[error("{0}")]
    Rule(String),
}

/// Seconds since the epoch above this are milliseconds by mistake (year 5138).
const MAX_SECONDS: u64 = 100_000_000_000;

/// The fields of `aps` the push-type rules look at; everything else is ignored.
/// Their types were checked by [`check`] already.
#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", default)]
struct RuleAps {
    event: Option<String>,
    timestamp: Option<u64>,
    content_state: Option<IgnoredAny>,
    attributes_type: Option<IgnoredAny>,
    attributes: Option<IgnoredAny>,
    input_push_token: Option<IgnoredAny>,
    input_push_channel: Option<IgnoredAny>,
    stale_date: Option<u64>,
    dismissal_date: Option<u64>,
    content_available: Option<i64>,
    content_changed: Option<bool>,
}

#[derive(Deserialize)]
struct RuleView {
    #[serde(default)]
    aps: Option<RuleAps>,
}

/// What a push type asks of a payload beyond [`check`] (call that first):
///
/// | push type | rule |
/// |---|---|
/// | liveactivity | `aps.event` (start, update, end) and `aps.timestamp` (seconds); `content-state` for start and update; `attributes-type` and `attributes` for start (push-to-start), and only there, as `input-push-token` and `input-push-channel`; dates in seconds, not milliseconds. A broadcast cannot start an activity. |
/// | background | `aps.content-available` is 1 |
/// | widgets, controls | `aps.content-changed` is true |
/// | the others | none |
///
/// ```
/// use apns::PushType;
/// use apns::payload::check_push_type;
///
/// let update = r#"{"aps":{"event":"update","timestamp":1700000000,"content-state":{"score":"2-1"}}}"#;
/// assert!(check_push_type(update, PushType::Liveactivity, false).is_ok());
/// let e = check_push_type(r#"{"aps":{"event":"update"}}"#, PushType::Liveactivity, false).unwrap_err();
/// assert!(e.to_string().starts_with("payload.aps.timestamp is required"), "{e}");
/// ```
pub fn check_push_type(
    raw: &str,
    push_type: crate::PushType,
    broadcast: bool,
) -> Result<(), PayloadError> {
    use crate::PushType as P;
    if !matches!(
        push_type,
        P::Liveactivity | P::Background | P::Widgets | P::Controls
    ) {
        return Ok(());
    }
    let rule = |m: String| Err(PayloadError::Rule(m));
    let aps = serde_json::from_str::<RuleView>(raw)
        .map_err(|e| PayloadError::Aps(format!("payload: {e}")))?
        .aps
        .unwrap_or_default();
    match push_type {
        P::Background => {
            if aps.content_available != Some(1) {
                return rule(
                    "payload.aps.content-available must be 1 for push type background (a background push without it wakes nothing)".into(),
                );
            }
        }
        P::Widgets | P::Controls => {
            if aps.content_changed != Some(true) {
                return rule(format!(
                    "payload.aps.content-changed must be true for push type {push_type}"
                ));
            }
        }
        _ => {
            let Some(event) = aps.event.as_deref() else {
                return rule(
                    "payload.aps.event is required for push type liveactivity: start, update or end".into(),
                );
            };
            let Some(ts) = aps.timestamp else {
                return rule(
                    "payload.aps.timestamp is required for push type liveactivity (unix seconds; the device drops updates older than the one it has)".into(),
                );
            };
            for (field, v) in [
                ("timestamp", Some(ts)),
                ("stale-date", aps.stale_date),
                ("dismissal-date", aps.dismissal_date),
            ] {
                if let Some(v) = v.filter(|v| *v > MAX_SECONDS) {
                    return rule(format!(
                        "payload.aps.{field} is {v}, which is milliseconds; Live Activities take unix seconds"
                    ));
                }
            }
            if broadcast && event == "start" {
                return rule(
                    "payload.aps.event start: a broadcast cannot start a Live Activity; start it with a push-to-start token, then update it on the channel".into(),
                );
            }
            if matches!(event, "start" | "update") && aps.content_state.is_none() {
                return rule(format!(
                    "payload.aps.content-state is required for event {event}"
                ));
            }
            if event == "start" {
                if aps.attributes_type.is_none() {
                    return rule(
                        "payload.aps.attributes-type is required for event start (the ActivityAttributes type the app declares)".into(),
                    );
                }
                if aps.attributes.is_none() {
                    return rule("payload.aps.attributes is required for event start".into());
                }
            } else {
                for (field, present) in [
                    ("attributes-type", aps.attributes_type.is_some()),
                    ("attributes", aps.attributes.is_some()),
                    ("input-push-token", aps.input_push_token.is_some()),
                    ("input-push-channel", aps.input_push_channel.is_some()),
                ] {
                    if present {
                        return rule(format!(
                            "payload.aps.{field} is only for event start, not {event}"
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Check a payload. `raw` must be valid JSON text (as a `serde_json::value::RawValue`
/// holds); its bytes are what APNs receives.
pub fn check(raw: &str) -> Result<(), PayloadError> {
    if !raw.trim_start().starts_with('{') {
        return Err(PayloadError::NotObject);
    }
    let scan = scan_payload(raw);
    if scan.depth > MAX_DEPTH {
        return Err(PayloadError::TooDeep);
    }
    if aps_ok(raw, scan.aps) {
        return Ok(());
    }
    // The whole payload again, with path tracking, to name the field. It is the
    // authority: should it accept what the quick check refused, the payload is fine.
    let mut de = serde_json::Deserializer::from_str(raw);
    match serde_path_to_error::deserialize::<_, PayloadCheck>(&mut de) {
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            Err(PayloadError::Aps(if path == "." || path.is_empty() {
                format!("payload.{inner}")
            } else {
                format!("payload.{path}: {inner}")
            }))
        }
        // The quick check and the full parse agree (a property test holds them to it).
        Ok(_) => Ok(()),
    }
}

/// Deepest nesting of objects and arrays accepted in a payload.
pub const MAX_DEPTH: usize = 32;

/// Where a payload's top-level `aps` value is, as found by [`scan_payload`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ApsAt {
    Absent,
    /// Byte range of the value.
    At(usize, usize),
    /// A top-level key has escapes (it may spell `aps`), or `aps` appears twice: only
    /// a full parse can tell.
    Unsure,
}

/// What one pass over a payload finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PayloadScan {
    /// Deepest nesting of objects and arrays.
    depth: usize,
    aps: ApsAt,
}

/// One pass over a JSON object that is already known to be valid: its nesting depth,
/// and where its top-level `aps` value is, so that only `aps` is parsed again. Strings
/// are skipped with `memchr` (payload bytes are mostly string content).
fn scan_payload(json: &str) -> PayloadScan {
    let b = json.as_bytes();
    let (mut d, mut max, mut i) = (0usize, 0usize, 0usize);
    let (mut aps, mut unsure) = (ApsAt::Absent, false);
    // At depth 1: is the next string a key; was the last key `aps`; where its value began.
    let (mut expect_key, mut key_is_aps, mut value_from) = (false, false, None::<usize>);
    let end_value = |at: usize, value_from: &mut Option<usize>, aps: &mut ApsAt| {
        if let Some(from) = value_from.take() {
            let v = &json[from..at];
            let from = from + (v.len() - v.trim_start().len());
            let to = at - (v.len() - v.trim_end().len());
            *aps = match *aps {
                ApsAt::Absent => ApsAt::At(from, to),
                _ => ApsAt::Unsure,
            };
        }
    };
    while let Some(&c) = b.get(i) {
        match c {
            b'"' => {
                let open = i;
                let mut escaped = false;
                i += 1;
                // To the closing quote, stepping over escapes (`\"`, `\\`).
                loop {
                    let Some(k) = b
                        .get(i..)
                        .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
                    else {
                        return PayloadScan {
                            depth: max,
                            aps: ApsAt::Unsure,
                        };
                    };
                    i += k;
                    if b[i] == b'"' {
                        break;
                    }
                    escaped = true;
                    i += 2;
                }
                if d == 1 && expect_key {
                    expect_key = false;
                    key_is_aps = !escaped && b[open + 1..i] == *b"aps";
                    unsure |= escaped;
                }
            }
            b':' if d == 1 && key_is_aps => {
                key_is_aps = false;
                value_from = Some(i + 1);
            }
            b',' if d == 1 => {
                end_value(i, &mut value_from, &mut aps);
                expect_key = true;
            }
            b'{' | b'[' => {
                d += 1;
                max = max.max(d);
                expect_key = d == 1;
            }
            b'}' | b']' => {
                if d == 1 {
                    end_value(i, &mut value_from, &mut aps);
                }
                d = d.saturating_sub(1);
            }
            _ => {}
        }
        i += 1;
    }
    PayloadScan {
        depth: max,
        aps: if unsure { ApsAt::Unsure } else { aps },
    }
}

/// Does the payload's `aps` have the types Apple documents? Parses only `aps` when the
/// scan found it; the whole payload when the scan could not tell.
fn aps_ok(raw: &str, at: ApsAt) -> bool {
    match at {
        ApsAt::Absent => true,
        ApsAt::At(from, to) => serde_json::from_str::<Aps>(&raw[from..to]).is_ok(),
        ApsAt::Unsure => serde_json::from_str::<PayloadCheck>(raw).is_ok(),
    }
}

/// The typed part of a payload: `aps`. Keys outside `aps` are the app's own.
///
/// The check types below keep nothing: strings, lists and dictionaries are checked
/// for their JSON type and dropped, so checking a payload allocates nothing.
#[derive(Deserialize)]
#[allow(dead_code)]
struct PayloadCheck {
    #[serde(default, deserialize_with = "present")]
    aps: Option<Aps>,
}

/// Apple's `aps` dictionary. Unknown keys inside `aps` are allowed: Apple adds keys,
/// and refusing them would break producers that use a new one before we know it.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
#[allow(dead_code)]
struct Aps {
    #[serde(default, deserialize_with = "present")]
    alert: Option<StrOrDict<AlertDict>>,
    #[serde(default, deserialize_with = "present")]
    badge: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    sound: Option<StrOrDict<CriticalSound>>,
    #[serde(default, deserialize_with = "present")]
    thread_id: Option<Str>,
    #[serde(default, deserialize_with = "present")]
    category: Option<Str>,
    #[serde(default, deserialize_with = "present")]
    content_available: Option<OneFlag>,
    #[serde(default, deserialize_with = "present")]
    mutable_content: Option<OneFlag>,
    #[serde(default, deserialize_with = "present")]
    interruption_level: Option<InterruptionLevel>,
    #[serde(default, deserialize_with = "present")]
    relevance_score: Option<UnitInterval>,
    #[serde(default, deserialize_with = "present")]
    filter_criteria: Option<Str>,
    #[serde(default, deserialize_with = "present")]
    target_content_id: Option<Str>,
    #[serde(default, deserialize_with = "present")]
    timestamp: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    event: Option<LiveActivityEvent>,
    #[serde(default, deserialize_with = "present")]
    content_state: Option<Dict>,
    #[serde(default, deserialize_with = "present")]
    stale_date: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    dismissal_date: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    attributes_type: Option<Str>,
    #[serde(default, deserialize_with = "present")]
    attributes: Option<Dict>,
    #[serde(default, deserialize_with = "present")]
    input_push_token: Option<One>,
    #[serde(default, deserialize_with = "present")]
    input_push_channel: Option<ChannelIdStr>,
    #[serde(default, deserialize_with = "present")]
    content_changed: Option<bool>,
}

/// A known key, when given, is not `null` (the job schema allows no null in `aps`).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// A JSON string, checked and dropped.
struct Str;

impl<'de> Deserialize<'de> for Str {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Str, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Str;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Str, E> {
                Ok(Str)
            }
        }
        d.deserialize_str(V)
    }
}

/// A channel id (padded base64), checked and dropped.
struct ChannelIdStr;

impl<'de> Deserialize<'de> for ChannelIdStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ChannelIdStr, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ChannelIdStr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a channel id (padded base64)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ChannelIdStr, E> {
                crate::notification::validate_channel_id(v)
                    .map(|_| ChannelIdStr)
                    .map_err(|e| E::custom(format!("not a channel id ({e})")))
            }
        }
        d.deserialize_str(V)
    }
}

/// A JSON object of any content, checked and dropped.
struct Dict;

impl<'de> Deserialize<'de> for Dict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dict, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Dict;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Dict, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Dict)
            }
        }
        d.deserialize_map(V)
    }
}

/// `alert` and `sound`: a string, or a dictionary of `T`'s keys.
#[allow(dead_code)]
enum StrOrDict<T> {
    Str,
    Dict(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for StrOrDict<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StrOrDict<T>, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = StrOrDict<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a dictionary")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<StrOrDict<T>, E> {
                Ok(StrOrDict::Str)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<StrOrDict<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(StrOrDict::Dict)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
#[allow(dead_code)]
struct AlertDict {
    #[serde(default, deserialize_with = "present")]
    title: Option<Str>,
    #[serde(default, deserialize_with = "present")]
    subtitle: Option<Str>,
    #[serde(default, deserialize_with = "present")]
    body: Option<Str>,
    #[serde(default, deserialize_with = "present")]
    launch_image: Option<Str>,
    #[serde(default, deserialize_with = "present")]
    title_loc_key: Option<Str>,
    #[serde(default, deserialize_with = "present")]
    title_loc_args: Option<Vec<Str>>,
    #[serde(default, deserialize_with = "present")]
    subtitle_loc_key: Option<Str>,
    #[serde(default, deserialize_with = "present")]
    subtitle_loc_args: Option<Vec<Str>>,
    #[serde(default, deserialize_with = "present")]
    loc_key: Option<Str>,
    #[serde(default, deserialize_with = "present")]
    loc_args: Option<Vec<Str>>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct CriticalSound {
    #[serde(default, deserialize_with = "present")]
    critical: Option<OneFlag>,
    #[serde(default, deserialize_with = "present")]
    name: Option<Str>,
    #[serde(default, deserialize_with = "present")]
    volume: Option<UnitInterval>,
}

/// `content-available`, `mutable-content` and `critical` take the number 1.
#[derive(Deserialize)]
#[serde(try_from = "i64")]
struct OneFlag;

impl TryFrom<i64> for OneFlag {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        if v == 1 || v == 0 {
            Ok(OneFlag)
        } else {
            Err(format!("must be 1 (or 0), not {v}"))
        }
    }
}

/// `input-push-token`: the number 1 (nothing else asks for a token).
#[derive(Deserialize)]
#[serde(try_from = "i64")]
struct One;

impl TryFrom<i64> for One {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        if v == 1 {
            Ok(One)
        } else {
            Err(format!("must be 1, not {v}"))
        }
    }
}

/// `relevance-score` and a critical sound's `volume`: a number from 0 to 1.
#[derive(Deserialize)]
#[serde(try_from = "f64")]
struct UnitInterval;

impl TryFrom<f64> for UnitInterval {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        if (0.0..=1.0).contains(&v) {
            Ok(UnitInterval)
        } else {
            Err(format!("must be from 0 to 1, not {v}"))
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum InterruptionLevel {
    Passive,
    Active,
    TimeSensitive,
    Critical,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum LiveActivityEvent {
    Start,
    Update,
    End,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-by-byte depth scan the memchr one replaced: the reference.
    fn depth_bytewise(json: &str) -> usize {
        let (mut d, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
        for b in json.bytes() {
            if in_str {
                match (esc, b) {
                    (true, _) => esc = false,
                    (false, b'\\') => esc = true,
                    (false, b'"') => in_str = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_str = true,
                b'{' | b'[' => {
                    d += 1;
                    max = max.max(d);
                }
                b'}' | b']' => d = d.saturating_sub(1),
                _ => {}
            }
        }
        max
    }

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        let depth = |s: &str| scan_payload(s).depth;
        assert_eq!(depth(r#"{"a":[{"b":"[[{{\"}}"}]}"#), 3);
        assert_eq!(depth(r#"{"a\\":{"b":1}}"#), 2);
        assert_eq!(depth("{}"), 1);
    }

    #[test]
    fn the_scan_finds_the_top_level_aps_value_only() {
        let at = |s: &str| match scan_payload(s).aps {
            ApsAt::At(from, to) => Some(s[from..to].to_string()),
            _ => None,
        };
        let j = r#"{"x":"a,}b:\"aps\"", "aps" : {"alert":"hi"} ,"y":[1,{"aps":2}]}"#;
        assert_eq!(at(j).as_deref(), Some(r#"{"alert":"hi"}"#));
        assert_eq!(at(r#"{"aps":null}"#).as_deref(), Some("null"));
        assert_eq!(at(r#"{"z":1,"aps":"x"}"#).as_deref(), Some(r#""x""#));
        assert_eq!(scan_payload(r#"{"x":{"aps":{}}}"#).aps, ApsAt::Absent);
        assert_eq!(scan_payload(r#"{"apsx":1,"ap":2}"#).aps, ApsAt::Absent);
        assert_eq!(
            scan_payload(r#"{"aps":{},"aps":{}}"#).aps,
            ApsAt::Unsure,
            "a duplicate is for serde to refuse"
        );
        assert_eq!(
            scan_payload(r#"{"\u0061ps":{"alert":5}}"#).aps,
            ApsAt::Unsure,
            "an escaped key may spell aps"
        );
    }

    proptest::proptest! {
        #[test]
        fn depth_agrees_with_the_bytewise_scan(s in r#"[\[\]{}"\\ax]{0,64}"#) {
            proptest::prop_assert_eq!(scan_payload(&s).depth, depth_bytewise(&s));
        }

        /// The quick check (only `aps`, found by the scan) accepts exactly what a full
        /// parse of the payload accepts.
        #[test]
        fn the_aps_check_agrees_with_a_full_parse(
            pairs in proptest::collection::vec((0usize..6, 0usize..16, 0usize..3), 0..5)
        ) {
            const KEYS: [&str; 6] = ["aps", r#"\u0061ps"#, "x", "apsx", "pad", r#"a\"ps"#];
            const VALUES: [&str; 16] = [
                r#"{"alert":"hi"}"#,
                r#"{"alert":5}"#,
                r#"{"badge":1,"sound":{"critical":1,"volume":0.5}}"#,
                r#"{"sound":{"volume":3}}"#,
                "null",
                r#""te,x}t""#,
                "[1,2]",
                r#"{"alert":{"title":"t","loc-args":["a","b"]}}"#,
                r#"{"alert":{"title":7}}"#,
                r#"{"content-state":{"a":[1,{"b":"}"}]}}"#,
                r#"{"content-state":5}"#,
                r#""a\"b,}{""#,
                r#"{"x":{"aps":{"alert":5}}}"#,
                r#"{"badge":-1}"#,
                r#"{ "interruption-level" : "critical" , "relevance-score" : 1 }"#,
                "17",
            ];
            const SPACE: [&str; 3] = ["", " ", "\n\t "];
            let body: Vec<String> = pairs
                .iter()
                .map(|&(k, v, w)| format!("{0}\"{1}\"{0}:{0}{2}{0}", SPACE[w], KEYS[k], VALUES[v]))
                .collect();
            let raw = format!("{{{}}}", body.join(","));
            proptest::prop_assert!(serde_json::from_str::<serde_json::Value>(&raw).is_ok(), "{}", raw);
            let full = serde_json::from_str::<PayloadCheck>(&raw).is_ok();
            proptest::prop_assert_eq!(aps_ok(&raw, scan_payload(&raw).aps), full, "{}", raw);
        }
    }
}
