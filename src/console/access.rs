//! Role permissions and unit visibility: who may do what, and who sees which alert. The one
//! place these rules live; REST, the WebSocket, the rules API and the webhook admin routes all
//! ask here.

use vigil_actors::Alert;

use crate::auth::{Claims, Role};

/// Something a console user may be allowed to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Acknowledge, resolve or comment on alerts.
    ActOnAlerts,
    /// List rules and read their sources.
    ReadRules,
    /// Publish a new version of a rule.
    WriteRules,
    /// Read the webhook dead letters.
    ViewDeadLetters,
    /// Write to the FHIR feed (device gateways, interface engines).
    WriteFhir,
    /// Assign nurses to beds for a shift.
    AssignBeds,
}

impl Permission {
    /// Whether `role` holds this permission.
    pub fn granted_to(self, role: Role) -> bool {
        match self {
            Permission::ActOnAlerts => {
                matches!(
                    role,
                    Role::Rrt | Role::Nurse | Role::Charge | Role::Physician | Role::Pharmacist | Role::Admin
                )
            }
            Permission::ReadRules => {
                matches!(role, Role::Informaticist | Role::Admin | Role::Pharmacist | Role::Physician)
            }
            Permission::WriteRules => matches!(role, Role::Informaticist | Role::Admin),
            Permission::ViewDeadLetters => role == Role::Admin,
            Permission::WriteFhir => role == Role::Gateway,
            Permission::AssignBeds => matches!(role, Role::Charge | Role::Admin),
        }
    }

    /// What a refusal says: safe to show to the client.
    pub fn refusal(self, role: Role) -> String {
        let role = role_name(role);
        match self {
            Permission::ActOnAlerts => format!("role {role} may not act on alerts"),
            Permission::ReadRules => {
                format!("role {role} may not do this; needs informaticist, admin, pharmacist or physician")
            }
            Permission::WriteRules => format!("role {role} may not do this; needs informaticist or admin"),
            Permission::ViewDeadLetters => format!("role {role} may not view webhook dead letters"),
            Permission::WriteFhir => format!("role {role} may not write to /fhir; needs gateway"),
            Permission::AssignBeds => format!("role {role} may not assign beds; needs charge or admin"),
        }
    }
}

/// Roles that may act on alerts (acknowledge, resolve, comment).
pub fn may_act(role: Role) -> bool {
    Permission::ActOnAlerts.granted_to(role)
}

/// Lowercase role name, as in tokens.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Rrt => "rrt",
        Role::Nurse => "nurse",
        Role::Charge => "charge",
        Role::Physician => "physician",
        Role::Pharmacist => "pharmacist",
        Role::Informaticist => "informaticist",
        Role::Admin => "admin",
        Role::Gateway => "gateway",
    }
}

/// Whether the token holder may see `alert`: its unit, or a unit or role it escalated to.
pub fn sees(claims: &Claims, alert: &Alert) -> bool {
    alert.visible_to(|u| claims.may_see(u), role_name(claims.role))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_follow_the_role() {
        use Permission::*;
        let table = [
            (Role::Rrt, [true, false, false, false, false, false]),
            (Role::Nurse, [true, false, false, false, false, false]),
            (Role::Charge, [true, false, false, false, false, true]),
            (Role::Physician, [true, true, false, false, false, false]),
            (Role::Pharmacist, [true, true, false, false, false, false]),
            (Role::Informaticist, [false, true, true, false, false, false]),
            (Role::Admin, [true, true, true, true, false, true]),
            (Role::Gateway, [false, false, false, false, true, false]),
        ];
        for (role, expected) in table {
            let granted = [ActOnAlerts, ReadRules, WriteRules, ViewDeadLetters, WriteFhir, AssignBeds]
                .map(|p| p.granted_to(role));
            assert_eq!(granted, expected, "{role:?}");
        }
        assert!(Permission::WriteRules.refusal(Role::Nurse).contains("role nurse"));
    }
}
