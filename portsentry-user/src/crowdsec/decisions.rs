//! The decision stream's answers (`GET /v1/decisions/stream`), read element by element: a
//! decision that cannot be enforced here is classified and counted, never an error, and one
//! bad element never costs the others.
//!
//! An answer is `{"new": [...] | null, "deleted": [...] | null}`; a decision is
//! `{"id", "origin", "scenario", "scope", "type", "value", "duration", ...}` (fields we do not
//! use are ignored). We enforce scope `Ip` or `Range` (any case) of type `ban`, IPv4 and
//! IPv6 (an `Ip` whose value is a network counts as a range); `duration` is a Go duration
//! (`59m58.8s`).

use std::{borrow::Cow, net::IpAddr, time::Duration};

use ipnet::IpNet;
use serde_json::Value;

use crate::kernel::addr::canonical_net;

/// The longest decision taken: longer ones are absurd (a garbled duration) and skipped.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// What became of one decision of an answer (the metrics' `result` label, the status).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// A ban put in force (or extended).
    Applied,
    /// A deleted or expired decision: its ban lifted (when no other decision holds it).
    Deleted,
    /// A ban of this network was in force already (ours, an operator's): left as it was.
    Duplicate,
    /// Not of type `ban` (captcha, throttle, ...).
    OtherType,
    /// Not of scope Ip or Range (Country, AS, Username, ...).
    OtherScope,
    /// Left out by CROWDSEC_ORIGINS or CROWDSEC_SCENARIOS_EXCLUDE.
    Filtered,
    /// Malformed: not an object, no id, an invalid address, a bad or absurd duration.
    Invalid,
    /// Refused by the ban guard (the ignore list, this host's addresses, loopback, a range
    /// wider than BAN_MIN_PREFIX_*).
    Protected,
    /// The kernel map is full or writing it failed.
    Failed,
}

impl Outcome {
    pub const ALL: [Outcome; 9] = [
        Outcome::Applied,
        Outcome::Deleted,
        Outcome::Duplicate,
        Outcome::OtherType,
        Outcome::OtherScope,
        Outcome::Filtered,
        Outcome::Invalid,
        Outcome::Protected,
        Outcome::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Deleted => "deleted",
            Outcome::Duplicate => "duplicate",
            Outcome::OtherType => "other_type",
            Outcome::OtherScope => "other_scope",
            Outcome::Filtered => "filtered",
            Outcome::Invalid => "invalid",
            Outcome::Protected => "protected",
            Outcome::Failed => "failed",
        }
    }
}

/// A decision we can enforce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub id: i64,
    pub net: IpNet,
    /// Time left (`duration`); zero in a `deleted` list is fine.
    pub left: Duration,
    pub origin: String,
    pub scenario: String,
}

/// One answer of the stream, read.
#[derive(Debug, Default)]
pub struct Answer {
    pub new: Vec<Decision>,
    pub deleted: Vec<Decision>,
    /// The decisions skipped: each one's id (`None` when it has none) and why.
    pub skipped: Vec<(Option<i64>, Outcome)>,
}

/// The filters of CROWDSEC_ORIGINS and CROWDSEC_SCENARIOS_EXCLUDE.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub origins: Vec<String>,
    pub scenarios_exclude: Vec<String>,
}

impl Filter {
    fn keeps(&self, origin: &str, scenario: &str) -> bool {
        (self.origins.is_empty() || self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)))
            && !self
                .scenarios_exclude
                .iter()
                .any(|w| scenario.contains(w.as_str()))
    }
}

/// Reads an answer; `Err` only when the body as a whole is not such an answer (not JSON,
/// not an object, `new` or `deleted` neither a list nor null).
///
/// A well-formed answer is read straight into the fields we use, borrowed from the body
/// (a list of 100,000 decisions, 14 MB: several times faster than a JSON value per field);
/// one that does not fit that shape (an element of another type, a field of another
/// kind) is read again element by element, so that one bad element costs only itself.
pub fn read(body: &[u8], filter: &Filter) -> Result<Answer, String> {
    let object = body.trim_ascii_start().first() == Some(&b'{');
    if let Some(typed) = object
        .then(|| serde_json::from_slice::<Typed<'_>>(body).ok())
        .flatten()
    {
        let mut out = Answer::default();
        for (list, deleted) in [(typed.new, false), (typed.deleted, true)] {
            for f in list.iter().flatten() {
                out.add(f.id, decision(f, deleted, filter), deleted);
            }
        }
        return Ok(out);
    }
    read_values(body, filter)
}

/// [`read`] element by element, through a JSON value.
fn read_values(body: &[u8], filter: &Filter) -> Result<Answer, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v
        .as_object()
        .ok_or_else(|| "not a JSON object".to_owned())?;
    let mut out = Answer::default();
    for (field, deleted) in [("new", false), ("deleted", true)] {
        let list = match obj.get(field) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(list)) => list,
            Some(_) => return Err(format!("\"{field}\" is not a list")),
        };
        for item in list {
            let f = Fields::of_value(item);
            let id = f.as_ref().and_then(|f| f.id);
            let d = f
                .ok_or(Outcome::Invalid)
                .and_then(|f| decision(&f, deleted, filter));
            out.add(id, d, deleted);
        }
    }
    Ok(out)
}

impl Answer {
    fn add(&mut self, id: Option<i64>, d: Result<Decision, Outcome>, deleted: bool) {
        match d {
            Ok(d) if deleted => self.deleted.push(d),
            Ok(d) => self.new.push(d),
            Err(why) => self.skipped.push((id, why)),
        }
    }
}

/// An answer of the expected shape.
#[derive(serde::Deserialize)]
struct Typed<'a> {
    #[serde(borrow, default)]
    new: Option<Vec<Fields<'a>>>,
    #[serde(borrow, default)]
    deleted: Option<Vec<Fields<'a>>>,
}

/// The fields of a decision we use (others are ignored); a missing one is empty. Read
/// from a JSON object only (a derived reader would take an array too).
#[derive(Default)]
struct Fields<'a> {
    id: Option<i64>,
    kind: Option<Cow<'a, str>>,
    scope: Option<Cow<'a, str>>,
    value: Option<Cow<'a, str>>,
    origin: Option<Cow<'a, str>>,
    scenario: Option<Cow<'a, str>>,
    duration: Option<Cow<'a, str>>,
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Fields<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Fields<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a decision object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<Fields<'a>, M::Error> {
                let mut f = Fields::default();
                while let Some(key) = m.next_key::<Cow<'de, str>>()? {
                    let slot = match key.as_ref() {
                        "id" => {
                            f.id = m.next_value()?;
                            continue;
                        }
                        "type" => &mut f.kind,
                        "scope" => &mut f.scope,
                        "value" => &mut f.value,
                        "origin" => &mut f.origin,
                        "scenario" => &mut f.scenario,
                        "duration" => &mut f.duration,
                        _ => {
                            m.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = m.next_value::<Option<Cow<'de, str>>>()?;
                }
                Ok(f)
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

impl<'a> Fields<'a> {
    /// The fields of one element of a list (`None`: not an object); a field of another
    /// kind than the expected one is empty.
    fn of_value(v: &'a Value) -> Option<Fields<'a>> {
        let obj = v.as_object()?;
        let text = |k: &str| obj.get(k).and_then(Value::as_str).map(Cow::Borrowed);
        Some(Fields {
            id: obj.get("id").and_then(Value::as_i64),
            kind: text("type"),
            scope: text("scope"),
            value: text("value"),
            origin: text("origin"),
            scenario: text("scenario"),
            duration: text("duration"),
        })
    }
}

fn text<'s>(f: &'s Option<Cow<'_, str>>) -> &'s str {
    f.as_deref().unwrap_or_default()
}

/// One decision, or why it is skipped. In a `deleted` list the filters do not apply (a
/// decision we never enforced is ignored by the caller) and the duration may be anything.
fn decision(f: &Fields<'_>, deleted: bool, filter: &Filter) -> Result<Decision, Outcome> {
    let id = f.id.ok_or(Outcome::Invalid)?;
    if !text(&f.kind).eq_ignore_ascii_case("ban") {
        return Err(Outcome::OtherType);
    }
    let scope = text(&f.scope);
    let value = text(&f.value).trim();
    let net = if scope.eq_ignore_ascii_case("ip") {
        // An `Ip` decision may name a network: `cscli decisions import` (1.4.6) stores
        // the ranges of a list under scope Ip. It is enforced as that network.
        match value.parse::<IpAddr>() {
            Ok(a) => IpNet::from(a),
            Err(_) => value.parse::<IpNet>().map_err(|_| Outcome::Invalid)?,
        }
    } else if scope.eq_ignore_ascii_case("range") {
        value.parse::<IpNet>().map_err(|_| Outcome::Invalid)?
    } else {
        return Err(Outcome::OtherScope);
    };
    // `::ffff:192.0.2.9` (a dual-stack service's log) is 192.0.2.9: one kernel entry.
    let net = canonical_net(net);
    let (origin, scenario) = (text(&f.origin).to_owned(), text(&f.scenario).to_owned());
    let left = if deleted {
        go_duration(text(&f.duration)).unwrap_or_default()
    } else {
        if !filter.keeps(&origin, &scenario) {
            return Err(Outcome::Filtered);
        }
        match go_duration(text(&f.duration)) {
            Some(d) if !d.is_zero() && d <= MAX_DURATION => d,
            _ => return Err(Outcome::Invalid),
        }
    };
    Ok(Decision {
        id,
        net,
        left,
        origin,
        scenario,
    })
}

/// A Go duration (`1h2m3.5s`, `150ms`, `4h`): `None` when malformed or negative.
pub fn go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.starts_with('-') {
        return None;
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[u..];
        total += number * unit;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// `d` as a Go duration CrowdSec accepts, to the second (`3600s`; at least `1s`).
pub fn to_go_duration(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let d = |s| go_duration(s);
        assert_eq!(d("59m58.8s"), Some(Duration::from_millis(3_598_800)));
        assert_eq!(d("4h"), Some(Duration::from_secs(14_400)));
        assert_eq!(d("1h0m0s"), Some(Duration::from_secs(3600)));
        assert_eq!(d("150ms"), Some(Duration::from_millis(150)));
        assert_eq!(d("0"), Some(Duration::ZERO));
        assert_eq!(d("-3s"), None);
        assert_eq!(d(""), None);
        assert_eq!(d("5d"), None);
        assert_eq!(d("h"), None);
        assert_eq!(d("1e400h"), None, "overflow");
        assert_eq!(to_go_duration(Duration::from_millis(3_598_800)), "3598s");
        assert_eq!(to_go_duration(Duration::ZERO), "1s");
    }

    /// An IPv4-mapped decision is the IPv4 network it stands for: the kernel keys both
    /// alike, so two networks in the store would share (and one lift remove) one entry.
    #[test]
    fn an_ipv4_mapped_decision_is_its_ipv4_network() {
        let body = br#"{"new":[
            {"id":1,"origin":"cscli","scenario":"m","scope":"Ip","type":"ban","value":"::ffff:192.0.2.9","duration":"1h"},
            {"id":2,"origin":"cscli","scenario":"m","scope":"Range","type":"ban","value":"::ffff:198.51.100.7/120","duration":"1h"},
            {"id":3,"origin":"cscli","scenario":"m","scope":"Range","type":"ban","value":"::ffff:0:0/95","duration":"1h"}
          ],"deleted":[{"id":4,"origin":"cscli","scenario":"m","scope":"Ip","type":"ban","value":"::ffff:192.0.2.5","duration":"-2s"}]}"#;
        let a = read(body, &Filter::default()).unwrap();
        let nets: Vec<String> = a.new.iter().map(|d| d.net.to_string()).collect();
        assert_eq!(nets, ["192.0.2.9/32", "198.51.100.0/24", "::fffe:0:0/95"]);
        assert_eq!(a.deleted[0].net.to_string(), "192.0.2.5/32");
    }

    #[test]
    fn reads_what_it_can_and_counts_the_rest() {
        let body = br#"{"new":[
            {"id":1,"origin":"cscli","scenario":"manual","scope":"Ip","type":"ban","value":"192.0.2.9","duration":"59m58.8s","extra":{"x":1}},
            {"id":2,"origin":"cscli","scenario":"m","scope":"Range","type":"ban","value":"198.51.100.7/24","duration":"1h"},
            {"id":3,"origin":"cscli","scenario":"m","scope":"ip","type":"ban","value":"2001:db8::7","duration":"1h"},
            {"id":12,"origin":"cscli","scenario":"m","scope":"Ip","type":"ban","value":"2001:db8:2::1/64","duration":"1h"},
            {"id":4,"origin":"cscli","scenario":"m","scope":"Ip","type":"captcha","value":"192.0.2.1","duration":"1h"},
            {"id":5,"origin":"cscli","scenario":"m","scope":"Country","type":"ban","value":"FR","duration":"1h"},
            {"id":6,"origin":"cscli","scenario":"m","scope":"Ip","type":"ban","value":"300.1.1.1","duration":"1h"},
            {"id":7,"origin":"cscli","scenario":"m","scope":"Ip","type":"ban","value":"192.0.2.8","duration":"-1s"},
            {"id":8,"origin":"cscli","scenario":"m","scope":"Ip","type":"ban","value":"192.0.2.8","duration":"999999999h"},
            {"origin":"cscli","scope":"Ip","type":"ban","value":"192.0.2.8","duration":"1h"},
            "garbage", null, 42,
            {"id":9,"origin":"CAPI","scenario":"crowdsecurity/ssh-bf","scope":"Ip","type":"ban","value":"192.0.2.10","duration":"1h"},
            {"id":10,"origin":"cscli","scenario":"crowdsecurity/http-probing","scope":"Ip","type":"ban","value":"192.0.2.11","duration":"1h"}
          ],"deleted":[{"id":11,"origin":"cscli","scenario":"m","scope":"Ip","type":"ban","value":"192.0.2.5","duration":"-2s"}]}"#;
        let filter = Filter {
            origins: vec!["cscli".into()],
            scenarios_exclude: vec!["http".into()],
        };
        let a = read(body, &filter).unwrap();
        let nets: Vec<String> = a.new.iter().map(|d| d.net.to_string()).collect();
        assert_eq!(
            nets,
            [
                "192.0.2.9/32",
                "198.51.100.0/24",
                "2001:db8::7/128",
                "2001:db8:2::/64"
            ]
        );
        assert_eq!(a.new[0].left, Duration::from_millis(3_598_800));
        assert_eq!(a.deleted.len(), 1);
        assert_eq!(a.deleted[0].net.to_string(), "192.0.2.5/32");
        let mut skipped: Vec<Outcome> = a.skipped.iter().map(|s| s.1).collect();
        skipped.sort();
        assert_eq!(
            skipped,
            [
                Outcome::OtherType,
                Outcome::OtherScope,
                Outcome::Filtered,
                Outcome::Filtered,
                Outcome::Invalid,
                Outcome::Invalid,
                Outcome::Invalid,
                Outcome::Invalid,
                Outcome::Invalid,
                Outcome::Invalid,
                Outcome::Invalid,
            ]
        );
        let empty = read(br#"{"new":null,"deleted":null}"#, &Filter::default()).unwrap();
        assert!(empty.new.is_empty() && empty.deleted.is_empty());
        assert!(read(b"<html>", &Filter::default()).is_err());
        assert!(read(br#"{"new":{}}"#, &Filter::default()).is_err());
        assert!(read(b"[]", &Filter::default()).is_err());
    }

    #[test]
    fn the_fast_path_reads_as_the_values_do() {
        let body = br#"{"new":[
            {"id":1,"origin":"cscli","scenario":"manual","scope":"Ip","type":"ban","value":"192.0.2.9","duration":"59m58.8s","extra":{"x":1}},
            {"id":2,"origin":"cscli","scenario":"m","scope":"Range","type":"ban","value":"198.51.100.7/24","duration":"1h"},
            {"id":4,"origin":"cscli","scenario":"m","scope":"Ip","type":"captcha","value":"192.0.2.1","duration":"1h"},
            {"id":6,"origin":"cscli","scenario":"m","scope":"Ip","type":"ban","value":"300.1.1.1","duration":"1h"},
            {"origin":"cscli","scope":"Ip","type":"ban","value":"192.0.2.8","duration":"1h"},
            {"id":9,"origin":"CAPI","scenario":"crowdsecurity/ssh-bf","scope":"Ip","type":"ban","value":"192.0.2.10","duration":"1h"}
          ],"deleted":[{"id":11,"origin":"cscli","scenario":"m","scope":"Ip","type":"ban","value":"192.0.2.5","duration":"-2s"}]}"#;
        assert!(
            serde_json::from_slice::<Typed<'_>>(body).is_ok(),
            "the fast path"
        );
        let filter = Filter {
            origins: vec!["cscli".into()],
            scenarios_exclude: Vec::new(),
        };
        let (fast, slow) = (
            read(body, &filter).unwrap(),
            read_values(body, &filter).unwrap(),
        );
        assert_eq!(fast.new, slow.new);
        assert_eq!(fast.deleted, slow.deleted);
        assert_eq!(fast.skipped, slow.skipped);
        assert_eq!(fast.new.len(), 2);
        // A field of another kind: the element alone is skipped.
        let odd =
            br#"{"new":[{"id":1,"scope":"Ip","type":"ban","value":"192.0.2.9","duration":"1h"},
            {"id":2,"scope":7,"type":"ban","value":"192.0.2.7","duration":"1h"}],"deleted":null}"#;
        assert!(serde_json::from_slice::<Typed<'_>>(odd).is_err());
        let a = read(odd, &Filter::default()).unwrap();
        assert_eq!(
            (a.new.len(), a.skipped.as_slice()),
            (1, &[(Some(2), Outcome::OtherScope)][..])
        );
    }
}
