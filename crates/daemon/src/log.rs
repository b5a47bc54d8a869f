//! Log lines in three formats. Every line carries the fields of the spans
//! it happens in (zrepl-style context: `job`, `kind`, `queue`, `seq`; a
//! push job's `outbox` and `to`, a pull job's `from` and `queue`):
//!
//! - human:  `2026-11-23T18:00:00Z  INFO [backups][7] job succeeded duration_ms=12`
//! - logfmt: `ts=2026-11-23T18:00:00Z level=info job=backups queue=/srv/q seq=7 msg="job succeeded" duration_ms=12`
//! - json:   `{"ts":"...","level":"info","job":"backups","queue":"/srv/q","seq":7,"msg":"job succeeded","duration_ms":12}`

use std::fmt::Write as _;
use std::io::Write;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// A field value, kept typed enough for JSON.
#[derive(Clone, Debug)]
enum Value {
    Str(String),
    Num(String),
    Bool(bool),
}

#[derive(Default)]
struct Fields(Vec<(&'static str, Value)>);

impl Visit for Fields {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.put(f.name(), Value::Str(v.to_string()));
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.put(f.name(), Value::Num(v.to_string()));
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.put(f.name(), Value::Num(v.to_string()));
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.put(f.name(), Value::Num(v.to_string()));
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.put(f.name(), Value::Bool(v));
    }
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        self.put(f.name(), Value::Str(format!("{v:?}")));
    }
}

impl Fields {
    fn put(&mut self, k: &'static str, v: Value) {
        match self.0.iter_mut().find(|(n, _)| *n == k) {
            Some(slot) => slot.1 = v,
            None => self.0.push((k, v)),
        }
    }
}

/// The layer that formats and writes every event as one line.
pub struct LineLayer {
    format: LogFormat,
    out: Mutex<Box<dyn Write + Send>>,
}

impl LineLayer {
    pub fn new(format: LogFormat, out: Box<dyn Write + Send>) -> LineLayer {
        LineLayer {
            format,
            out: Mutex::new(out),
        }
    }
}

impl<S> Layer<S> for LineLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        attrs.record(&mut f);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(f);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(f) = ext.get_mut::<Fields>() {
                values.record(f);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut ctx_fields = Fields::default();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<Fields>() {
                    for (k, v) in &f.0 {
                        ctx_fields.put(k, v.clone());
                    }
                }
            }
        }
        let mut ev = Fields::default();
        event.record(&mut ev);
        let message = match ev.0.iter().position(|(k, _)| *k == "message") {
            Some(i) => match ev.0.remove(i).1 {
                Value::Str(s) | Value::Num(s) => s,
                Value::Bool(b) => b.to_string(),
            },
            None => String::new(),
        };
        for (k, v) in ev.0 {
            ctx_fields.put(k, v);
        }
        let line = render(
            self.format,
            *event.metadata().level(),
            &message,
            &ctx_fields.0,
        );
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

fn logfmt_value(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\')
    {
        s.to_string()
    } else {
        let mut o = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => o.push_str("\\\""),
                '\\' => o.push_str("\\\\"),
                '\n' => o.push_str("\\n"),
                '\r' => o.push_str("\\r"),
                '\t' => o.push_str("\\t"),
                c if c.is_control() => {
                    let _ = write!(o, "\\u{:04x}", c as u32);
                }
                c => o.push(c),
            }
        }
        o.push('"');
        o
    }
}

/// The fields of a job's log context, which the human format leaves to the
/// `[job][seq]` prefix.
const CONTEXT: &[&str] = &["job", "kind", "seq", "queue", "outbox", "to", "from"];

fn render(
    format: LogFormat,
    level: Level,
    message: &str,
    fields: &[(&'static str, Value)],
) -> String {
    let text = |v: &Value| match v {
        Value::Str(s) | Value::Num(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
    };
    match format {
        LogFormat::Human => {
            let mut o = format!("{} {:>5} ", crate::state::now_rfc3339(), level.as_str());
            let get = |k: &str| fields.iter().find(|(n, _)| *n == k).map(|(_, v)| text(v));
            // The message and the prefix may carry file names and job
            // data: control characters are shown escaped, so every event
            // stays one line and no job can forge one (fields are quoted
            // and escaped by logfmt_value).
            let esc = |s: &str| fspl_queue::escape_controls(s).into_owned();
            if let Some(j) = get("job") {
                let _ = write!(o, "[{}]", esc(&j));
                if let Some(s) = get("seq") {
                    let _ = write!(o, "[{}]", esc(&s));
                }
                o.push(' ');
            }
            o.push_str(&esc(message));
            for (k, v) in fields {
                // The job's context is in the prefix.
                if CONTEXT.contains(k) {
                    continue;
                }
                let _ = write!(o, " {k}={}", logfmt_value(&text(v)));
            }
            o.push('\n');
            o
        }
        LogFormat::Logfmt => {
            let mut o = format!(
                "ts={} level={}",
                crate::state::now_rfc3339(),
                level_name(level)
            );
            for (k, v) in fields {
                let _ = write!(o, " {k}={}", logfmt_value(&text(v)));
            }
            let _ = write!(o, " msg={}", logfmt_value(message));
            o.push('\n');
            o
        }
        LogFormat::Json => {
            let mut m = serde_json::Map::new();
            m.insert("ts".into(), crate::state::now_rfc3339().into());
            m.insert("level".into(), level_name(level).into());
            for (k, v) in fields {
                let jv = match v {
                    Value::Str(s) => serde_json::Value::String(s.clone()),
                    Value::Num(s) => s
                        .parse::<i64>()
                        .map(serde_json::Value::from)
                        .or_else(|_| s.parse::<u64>().map(serde_json::Value::from))
                        .or_else(|_| s.parse::<f64>().map(serde_json::Value::from))
                        .unwrap_or_else(|_| serde_json::Value::String(s.clone())),
                    Value::Bool(b) => serde_json::Value::Bool(*b),
                };
                m.insert((*k).to_string(), jv);
            }
            m.insert("msg".into(), message.into());
            let mut s = serde_json::Value::Object(m).to_string();
            s.push('\n');
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_format_is_one_parseable_line_with_context() {
        let fields = vec![
            ("job", Value::Str("backups".into())),
            ("queue", Value::Str("/srv/q x".into())),
            ("seq", Value::Num("7".into())),
            ("ok", Value::Bool(true)),
        ];
        let h = render(LogFormat::Human, Level::INFO, "job\nsucceeded", &fields);
        assert!(h.contains(" [backups][7] job\\nsucceeded ok=true\n"), "{h}");
        assert_eq!(h.lines().count(), 1);
        let l = render(LogFormat::Logfmt, Level::WARN, "say \"hi\"", &fields);
        assert!(
            l.contains(
                " level=warn job=backups queue=\"/srv/q x\" seq=7 ok=true msg=\"say \\\"hi\\\"\""
            ),
            "{l}"
        );
        let h = render(
            LogFormat::Human,
            Level::WARN,
            "moved to /q/rejected/fspl-x\nfspl: FORGED \x1b[2J\x7f.fspl",
            &[("file", Value::Str("/q/jobs/fspl-x\n\x1b\u{85}".into()))],
        );
        assert_eq!(h.lines().count(), 1, "{h}");
        assert!(!h.trim_end().chars().any(char::is_control), "{h:?}");
        assert!(
            h.contains(
                r#"fspl-x\nfspl: FORGED \x1b[2J\x7f.fspl file="/q/jobs/fspl-x\n\u001b\u0085""#
            ),
            "{h}"
        );
        let j = render(LogFormat::Json, Level::ERROR, "boom", &fields);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(v["job"], "backups");
        assert_eq!(v["msg"], "boom");
        assert_eq!(v["level"], "error");
    }
}
