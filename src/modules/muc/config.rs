//! A room's configuration (XEP-0045 section 10.2, FORM_TYPE muc#roomconfig): the form an owner
//! gets and submits, and its stored form (JSON in `muc_rooms.config`).

use serde::{Deserialize, Serialize};

use crate::config::MucConfig;
use crate::error::{Condition, StanzaError};
use crate::xml::Element;

use super::NS_DATA;

pub const NS_ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";

/// Who may see occupants' real JIDs (muc#roomconfig_whois).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Whois {
    Moderators,
    Anyone,
}

/// Everything an owner can set. Stored as JSON; fields added later take their defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoomConfig {
    pub name: String,
    pub description: String,
    /// Kept when the last occupant leaves, and across restarts.
    pub persistent: bool,
    /// Listed in the service's disco#items.
    pub public: bool,
    pub members_only: bool,
    /// Only occupants with voice (participants and moderators) may speak.
    pub moderated: bool,
    /// Empty: no password.
    pub password: String,
    pub whois: Whois,
    /// Any participant may change the subject (otherwise moderators only).
    pub change_subject: bool,
    /// Any occupant may invite (otherwise admins and owners only, in members-only rooms).
    pub allow_invites: bool,
    /// Occupants may send each other private messages.
    pub allow_pm: bool,
    pub max_users: usize,
    /// Messages go to the room's archive (XEP-0313).
    pub archive: bool,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            name: String::new(),
            description: String::new(),
            persistent: false,
            public: true,
            members_only: false,
            moderated: false,
            password: String::new(),
            whois: Whois::Moderators,
            change_subject: true,
            allow_invites: true,
            allow_pm: true,
            max_users: 200,
            archive: true,
        }
    }
}

fn bool_value(v: &str) -> Result<bool, StanzaError> {
    match v.trim() {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(StanzaError::new(Condition::BadRequest).with_text(format!("not a boolean: {v}"))),
    }
}

impl RoomConfig {
    /// The defaults of a new room on this service.
    pub fn new_room(muc: &MucConfig) -> RoomConfig {
        RoomConfig { max_users: muc.default_max_occupants, archive: muc.archive_by_default, ..Default::default() }
    }

    /// The owner's form (XEP-0045 section 10.2), filled with the current values.
    pub fn form(&self, muc: &MucConfig) -> Element {
        let field = |var: &str, typ: &str, label: &str, value: &str| {
            Element::new("field", NS_DATA)
                .attr("var", var)
                .attr("type", typ)
                .attr("label", label)
                .child(Element::new("value", NS_DATA).text(value))
        };
        let b = |v: bool| if v { "1" } else { "0" };
        let mut max = field("muc#roomconfig_maxusers", "list-single", "Maximum number of occupants", &self.max_users.to_string());
        for n in [10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000] {
            if n <= muc.max_occupants_limit {
                max = max.child(Element::new("option", NS_DATA).child(Element::new("value", NS_DATA).text(n.to_string())));
            }
        }
        let whois = match self.whois {
            Whois::Moderators => "moderators",
            Whois::Anyone => "anyone",
        };
        let mut whois_field = field("muc#roomconfig_whois", "list-single", "Who may see real JIDs", whois);
        for w in ["moderators", "anyone"] {
            whois_field = whois_field.child(Element::new("option", NS_DATA).attr("label", w).child(Element::new("value", NS_DATA).text(w)));
        }
        Element::new("x", NS_DATA)
            .attr("type", "form")
            .child(Element::new("title", NS_DATA).text("Room configuration"))
            .child(field("FORM_TYPE", "hidden", "", NS_ROOMCONFIG))
            .child(field("muc#roomconfig_roomname", "text-single", "Name", &self.name))
            .child(field("muc#roomconfig_roomdesc", "text-single", "Description", &self.description))
            .child(field("muc#roomconfig_persistentroom", "boolean", "Keep the room when it is empty", b(self.persistent)))
            .child(field("muc#roomconfig_publicroom", "boolean", "List the room publicly", b(self.public)))
            .child(field("muc#roomconfig_membersonly", "boolean", "Members only", b(self.members_only)))
            .child(field("muc#roomconfig_moderatedroom", "boolean", "Moderated (only occupants with voice speak)", b(self.moderated)))
            .child(field("muc#roomconfig_passwordprotectedroom", "boolean", "Password required to enter", b(!self.password.is_empty())))
            .child(field("muc#roomconfig_roomsecret", "text-private", "Password", &self.password))
            .child(whois_field)
            .child(field("muc#roomconfig_changesubject", "boolean", "Participants may change the subject", b(self.change_subject)))
            .child(field("muc#roomconfig_allowinvites", "boolean", "Participants may invite others", b(self.allow_invites)))
            .child(field(
                "muc#roomconfig_allowpm",
                "list-single",
                "Private messages between occupants",
                if self.allow_pm { "anyone" } else { "none" },
            ))
            .child(max)
            .child(field("muc#roomconfig_enablearchiving", "boolean", "Archive messages", b(self.archive)))
    }

    /// Apply a submitted form (XEP-0045 section 10.2). Fields left out keep their value;
    /// unknown fields are ignored (section 10.2: the service "SHOULD ignore" them).
    pub fn apply(&mut self, x: &Element, muc: &MucConfig) -> Result<(), StanzaError> {
        let mut next = self.clone();
        let mut password_protected = None;
        for f in x.elements().filter(|e| e.name == "field") {
            let values: Vec<String> = f.elements().filter(|v| v.name == "value").map(|v| v.text_content()).collect();
            let v = values.first().map(String::as_str).unwrap_or("");
            match f.get_attr("var").unwrap_or("") {
                "FORM_TYPE" if v.trim() != NS_ROOMCONFIG => {
                    return Err(StanzaError::new(Condition::BadRequest).with_text("FORM_TYPE must be muc#roomconfig"));
                }
                "muc#roomconfig_roomname" => next.name = v.to_string(),
                "muc#roomconfig_roomdesc" => next.description = v.to_string(),
                "muc#roomconfig_persistentroom" => next.persistent = bool_value(v)?,
                "muc#roomconfig_publicroom" => next.public = bool_value(v)?,
                "muc#roomconfig_membersonly" => next.members_only = bool_value(v)?,
                "muc#roomconfig_moderatedroom" => next.moderated = bool_value(v)?,
                "muc#roomconfig_passwordprotectedroom" => password_protected = Some(bool_value(v)?),
                "muc#roomconfig_roomsecret" => next.password = v.to_string(),
                "muc#roomconfig_whois" => {
                    next.whois = match v.trim() {
                        "anyone" => Whois::Anyone,
                        "moderators" => Whois::Moderators,
                        _ => return Err(StanzaError::new(Condition::NotAcceptable).with_text("whois: moderators or anyone")),
                    }
                }
                "muc#roomconfig_changesubject" => next.change_subject = bool_value(v)?,
                "muc#roomconfig_allowinvites" => next.allow_invites = bool_value(v)?,
                "muc#roomconfig_allowpm" => next.allow_pm = !matches!(v.trim(), "none" | "0" | "false"),
                "muc#roomconfig_maxusers" => {
                    let n = match v.trim() {
                        "" | "none" => muc.max_occupants_limit,
                        n => n.parse::<usize>().map_err(|_| StanzaError::new(Condition::NotAcceptable).with_text("maxusers: a number"))?,
                    };
                    if n == 0 || n > muc.max_occupants_limit {
                        return Err(StanzaError::new(Condition::NotAcceptable)
                            .with_text(format!("maxusers: between 1 and {}", muc.max_occupants_limit)));
                    }
                    next.max_users = n;
                }
                "muc#roomconfig_enablearchiving" | "muc#roomconfig_enablelogging" | "mam" => next.archive = bool_value(v)?,
                _ => {}
            }
        }
        if password_protected == Some(false) {
            next.password.clear();
        } else if password_protected == Some(true) && next.password.is_empty() {
            return Err(StanzaError::new(Condition::NotAcceptable).with_text("a password-protected room needs a password"));
        }
        *self = next;
        Ok(())
    }

    /// The room's disco#info features (XEP-0045 section 6.4).
    pub fn features(&self) -> Vec<&'static str> {
        let mut v = vec![super::NS_MUC, crate::xml::ns::DISCO_INFO];
        v.push(if self.persistent { "muc_persistent" } else { "muc_temporary" });
        v.push(if self.public { "muc_public" } else { "muc_hidden" });
        v.push(if self.members_only { "muc_membersonly" } else { "muc_open" });
        v.push(if self.moderated { "muc_moderated" } else { "muc_unmoderated" });
        v.push(if self.password.is_empty() { "muc_unsecured" } else { "muc_passwordprotected" });
        v.push(if self.whois == Whois::Anyone { "muc_nonanonymous" } else { "muc_semianonymous" });
        if self.archive {
            v.push(crate::modules::mam::NS_MAM);
        }
        v.push(super::NS_STABLE_ID);
        v.push(super::NS_SELF_PING);
        v.push(super::NS_OCCUPANT_ID);
        v.push(super::NS_MODERATE);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(fields: &[(&str, &str)]) -> Element {
        let mut x = Element::new("x", NS_DATA).attr("type", "submit");
        for (var, v) in fields {
            x = x.child(Element::new("field", NS_DATA).attr("var", *var).child(Element::new("value", NS_DATA).text(*v)));
        }
        x
    }

    #[test]
    fn a_submitted_form_is_applied_whole_or_not_at_all() {
        let muc: MucConfig = toml::from_str("").unwrap();
        let mut c = RoomConfig::new_room(&muc);
        c.apply(
            &submit(&[
                ("FORM_TYPE", NS_ROOMCONFIG),
                ("muc#roomconfig_roomname", "Ops"),
                ("muc#roomconfig_persistentroom", "1"),
                ("muc#roomconfig_whois", "anyone"),
                ("muc#roomconfig_maxusers", "50"),
                ("muc#roomconfig_passwordprotectedroom", "1"),
                ("muc#roomconfig_roomsecret", "s3"),
                ("x-unknown", "ignored"),
            ]),
            &muc,
        )
        .unwrap();
        assert_eq!((c.name.as_str(), c.persistent, c.whois, c.max_users, c.password.as_str()), ("Ops", true, Whois::Anyone, 50, "s3"));
        let before = c.clone();
        let bad = submit(&[("muc#roomconfig_roomname", "Changed"), ("muc#roomconfig_maxusers", "999999")]);
        assert_eq!(c.apply(&bad, &muc).unwrap_err().condition, Condition::NotAcceptable);
        assert_eq!(c, before, "nothing applied from a refused form");
        c.apply(&submit(&[("muc#roomconfig_passwordprotectedroom", "0")]), &muc).unwrap();
        assert!(c.password.is_empty());
        assert!(c.features().contains(&"muc_unsecured") && c.features().contains(&"muc_nonanonymous"));
    }

    #[test]
    fn stored_configs_missing_fields_take_defaults() {
        let c: RoomConfig = serde_json::from_str(r#"{"name":"x","persistent":true}"#).unwrap();
        assert!(c.persistent && c.public && c.archive);
        let back: RoomConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
