//! Software Version (XEP-0092).

use super::{IqFuture, IqHandler, IqRequest, Module, Spec};
use crate::error::Condition;
use crate::server::Server;
use crate::xml::{ns, Element};

pub const MODULE: Module = Module {
    name: "version",
    specs: &[Spec { id: "XEP-0092", title: "Software Version", note: "" }],
    host_features: &[ns::VERSION],
    account_features: &[],
    iq: &[IqHandler { ns: ns::VERSION, on_host: true, on_account: false, handle }],
};

fn handle<'a>(_server: &'a Server, req: IqRequest<'a>) -> IqFuture<'a> {
    Box::pin(async move {
        if req.is_set() {
            return Err(Condition::NotAllowed.into());
        }
        Ok(Some(
            Element::new("query", ns::VERSION)
                .child(Element::new("name", ns::VERSION).text("Starling"))
                .child(Element::new("version", ns::VERSION).text(env!("CARGO_PKG_VERSION"))),
        ))
    })
}
