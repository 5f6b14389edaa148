//! XMPP Ping (XEP-0199): the server answers pings to its domain and on behalf of accounts.

use super::{IqFuture, IqHandler, IqRequest, Module, Spec};
use crate::server::Server;
use crate::xml::ns;

pub const MODULE: Module = Module {
    name: "ping",
    specs: &[Spec { id: "XEP-0199", title: "XMPP Ping", note: "" }],
    host_features: &[ns::PING],
    account_features: &[],
    iq: &[IqHandler { ns: ns::PING, on_host: true, on_account: true, handle }],
};

fn handle<'a>(_server: &'a Server, req: IqRequest<'a>) -> IqFuture<'a> {
    Box::pin(async move {
        if req.is_set() || req.payload.name != "ping" {
            return Err(crate::error::Condition::BadRequest.into());
        }
        Ok(None)
    })
}
