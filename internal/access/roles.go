package access

import (
	"fmt"
	"slices"
	"sort"
)

// Permission names one thing a principal may do through the admin API. Every
// API operation declares exactly one; a principal holds the union of its
// roles' permissions. Deny by default: an operation whose permission no role
// grants is open to nobody.
type Permission string

// Permissions. Read permissions only show; the others change something and
// therefore need a second factor for people (see Role.Changes).
const (
	DevicesRead   Permission = "devices:read"   // list and show devices
	DevicesManage Permission = "devices:manage" // preregister, approve, reject
	DevicesRevoke Permission = "devices:revoke" // revoke, decommission, quarantine

	ManufacturersRead   Permission = "manufacturers:read"
	ManufacturersManage Permission = "manufacturers:manage" // register, remove (two-person)

	CARead Permission = "ca:read"

	AuditRead   Permission = "audit:read"
	AuditExport Permission = "audit:export" // export and verify the chain

	TokensManage Permission = "tokens:manage" // create, list and revoke API tokens
	UsersManage  Permission = "users:manage"  // accounts and their roles (two-person)

	ApprovalsRead Permission = "approvals:read" // see pending two-person requests

	ReleasesPublish  Permission = "releases:publish" // two-person
	DrugLibsPublish  Permission = "druglibs:publish" // two-person
	TherapyCommand   Permission = "therapy:command"  // signed commands to devices of one's units
	MonitorRulesEdit Permission = "monitor:rules"    // behaviour rules
	RolloutsManage   Permission = "rollouts:manage"  // staged rollouts
	SelfService      Permission = "self"             // one's own session, password and second factors
)

// changes lists the permissions that change state: a person holding any of
// them must log in with a second factor.
var changes = map[Permission]bool{
	DevicesManage: true, DevicesRevoke: true, ManufacturersManage: true, TokensManage: true,
	UsersManage: true, ReleasesPublish: true, DrugLibsPublish: true, TherapyCommand: true,
	MonitorRulesEdit: true, RolloutsManage: true,
}

// Changes reports whether p changes state.
func (p Permission) Changes() bool { return changes[p] }

// Role is a named set of permissions, documented in docs/access.md.
type Role string

// Roles.
const (
	RoleAdmin      Role = "admin"      // everything
	RoleSecurity   Role = "security"   // quarantine, revoke, rules, manufacturers, audit
	RoleBiomed     Role = "biomed"     // devices and rollouts
	RoleRelease    Role = "release"    // releases
	RolePharmacist Role = "pharmacist" // drug libraries
	RoleClinician  Role = "clinician"  // therapy commands for devices of their units
	RoleAuditor    Role = "auditor"    // read-only plus audit export
	RoleViewer     Role = "viewer"     // read-only
)

var readOnly = []Permission{DevicesRead, ManufacturersRead, CARead, ApprovalsRead, SelfService}

var rolePermissions = map[Role][]Permission{
	RoleAdmin: {
		DevicesRead, DevicesManage, DevicesRevoke, ManufacturersRead, ManufacturersManage, CARead,
		AuditRead, AuditExport, TokensManage, UsersManage, ApprovalsRead, ReleasesPublish,
		DrugLibsPublish, MonitorRulesEdit, RolloutsManage, SelfService,
	},
	RoleSecurity:   append(slices.Clone(readOnly), DevicesRevoke, ManufacturersManage, MonitorRulesEdit, AuditRead, AuditExport),
	RoleBiomed:     append(slices.Clone(readOnly), DevicesManage, RolloutsManage),
	RoleRelease:    append(slices.Clone(readOnly), ReleasesPublish),
	RolePharmacist: append(slices.Clone(readOnly), DrugLibsPublish),
	RoleClinician:  append(slices.Clone(readOnly), TherapyCommand),
	RoleAuditor:    append(slices.Clone(readOnly), AuditRead, AuditExport),
	RoleViewer:     slices.Clone(readOnly),
}

// Roles lists every role, sorted.
func Roles() []Role {
	out := make([]Role, 0, len(rolePermissions))
	for r := range rolePermissions {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Valid reports whether r is a known role.
func (r Role) Valid() bool { _, ok := rolePermissions[r]; return ok }

// Permissions returns the role's permissions.
func (r Role) Permissions() []Permission { return slices.Clone(rolePermissions[r]) }

// Changes reports whether the role holds any permission that changes state.
func (r Role) Changes() bool {
	for _, p := range rolePermissions[r] {
		if p.Changes() {
			return true
		}
	}
	return false
}

// ParseRoles checks a list of role names.
func ParseRoles(names []string) ([]Role, error) {
	out := make([]Role, 0, len(names))
	for _, n := range names {
		r := Role(n)
		if !r.Valid() {
			return nil, fmt.Errorf("%w: unknown role %q (roles: %v)", ErrInvalid, n, Roles())
		}
		if !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out, nil
}

// Principal is who is calling: a person with a session, or an API token.
type Principal struct {
	Kind  string   `json:"kind"` // "user" or "token"
	ID    string   `json:"id"`
	Name  string   `json:"name"`
	Roles []Role   `json:"roles"`
	Sites []string `json:"sites,omitempty"` // empty: every site
}

// Principal kinds.
const (
	KindUser  = "user"
	KindToken = "token"
)

// Actor names the principal in the audit log: "user:<id>" or "token:<id>".
func (p Principal) Actor() string { return p.Kind + ":" + p.ID }

// Can reports whether any of the principal's roles grants perm.
func (p Principal) Can(perm Permission) bool {
	for _, r := range p.Roles {
		if slices.Contains(rolePermissions[r], perm) {
			return true
		}
	}
	return false
}

// InSite reports whether the principal may act on objects of site. A
// principal without sites acts everywhere; one with sites acts only there,
// and not on objects that belong to no site.
func (p Principal) InSite(site string) bool {
	return len(p.Sites) == 0 || slices.Contains(p.Sites, site)
}
