//! Entity Time (XEP-0202). The server reports UTC.

use super::{IqFuture, IqHandler, IqRequest, Module, Spec};
use crate::error::Condition;
use crate::server::Server;
use crate::xml::{ns, Element};

pub const MODULE: Module = Module {
    name: "time",
    specs: &[Spec { id: "XEP-0202", title: "Entity Time", note: "" }],
    host_features: &[ns::TIME],
    account_features: &[],
    iq: &[IqHandler { ns: ns::TIME, on_host: true, on_account: false, handle }],
};

/// XEP-0082 date-time of a server timestamp (microseconds since the epoch, as stored).
pub fn xmpp_datetime_micros(us: i64) -> String {
    xmpp_datetime(time::OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH))
}

/// XEP-0082 date-time in UTC with milliseconds.
pub fn xmpp_datetime(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

fn handle<'a>(_server: &'a Server, req: IqRequest<'a>) -> IqFuture<'a> {
    Box::pin(async move {
        if req.is_set() {
            return Err(Condition::NotAllowed.into());
        }
        Ok(Some(
            Element::new("time", ns::TIME)
                .child(Element::new("tzo", ns::TIME).text("+00:00"))
                .child(Element::new("utc", ns::TIME).text(xmpp_datetime(time::OffsetDateTime::now_utc()))),
        ))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc() {
        let t = time::OffsetDateTime::from_unix_timestamp(1_000_000_000).unwrap();
        assert_eq!(super::xmpp_datetime(t), "2001-09-09T01:46:40.000Z");
    }
}
