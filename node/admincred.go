package node

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"strings"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/tallyauth/tally/issuance"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// Named admin credentials (issue 13). Besides the static admin token (kept
// for development and bootstrap; its actor is "bootstrap-token"), the admin
// and cluster-admin APIs accept named credentials created with
// "tally admin credential create": a bearer token "tadm_<id>_<secret>" of
// which only a keyed hash (the node's KEK) is stored in Raft, with a role,
// an expiry and a revocation time.
//
//	admin         everything
//	operator      cluster operations (ClusterAdminService) and every read
//	tenant-admin  every call about its one tenant, except creating tenants
//	auditor       reads only (Get*, List*, VerifyAudit)
//
// Credential management is for the admin role alone.

// featureThreat names the issue-13 Raft operations (120-122) in
// MemberStatus.features: a leader proposes them only once every member
// applies them.
const featureThreat = "threat_protection"

func init() { features = append(features, featureThreat) }

const (
	adminTokenPrefix = "tadm_"
	// defaultAdminCredentialTTL is the lifetime of a credential created
	// without one.
	defaultAdminCredentialTTL = 90 * 24 * time.Hour
	// bootstrapActor is the audit actor of the static admin token.
	bootstrapActor = "bootstrap-token"
)

// principal is an authenticated admin caller.
type principal struct {
	actor  string // for the audit log: "bootstrap-token" or "<name> (<id>)"
	role   string
	tenant string // tenant-admin only
	credID string
}

type principalKey struct{}

func principalFrom(ctx context.Context) (principal, bool) {
	p, ok := ctx.Value(principalKey{}).(principal)
	return p, ok
}

// namedCreds looks named credentials up in the replicated state.
type namedCreds struct {
	fsm *raft.FSM
	kek *issuance.KEK
	now func() time.Time
}

// bearerToken returns the token of a "Bearer" Authorization header.
func bearerToken(header string) string {
	const prefix = "bearer "
	if len(header) <= len(prefix) || !strings.EqualFold(header[:len(prefix)], prefix) {
		return ""
	}
	return strings.TrimSpace(header[len(prefix):])
}

// principal authenticates an Authorization header value.
func (a adminAuth) principal(header string) (principal, bool) {
	tok := bearerToken(header)
	if tok == "" {
		return principal{}, false
	}
	if strings.HasPrefix(tok, adminTokenPrefix) && a.named != nil {
		return a.named.lookup(tok)
	}
	got := sha256.Sum256([]byte(tok))
	if subtle.ConstantTimeCompare(got[:], a.digest[:]) == 1 {
		return principal{actor: bootstrapActor, role: raft.RoleAdmin}, true
	}
	return principal{}, false
}

// checkRoles reports whether header authenticates a caller with one of
// roles.
func (a adminAuth) checkRoles(header string, roles ...string) bool {
	p, ok := a.principal(header)
	if !ok {
		return false
	}
	for _, r := range roles {
		if p.role == r {
			return true
		}
	}
	return false
}

func (c *namedCreds) lookup(tok string) (principal, bool) {
	rest := strings.TrimPrefix(tok, adminTokenPrefix)
	id, _, ok := strings.Cut(rest, "_")
	if !ok || id == "" || len(id) > 64 {
		return principal{}, false
	}
	cred, found := c.fsm.AdminCredential(id)
	want := c.kek.HashSecret(tok)
	if !found {
		// Same work as a found credential: no timing oracle on ids.
		subtle.ConstantTimeCompare(want, want)
		return principal{}, false
	}
	if subtle.ConstantTimeCompare(want, cred.TokenHash) != 1 {
		return principal{}, false
	}
	now := c.now().UnixNano()
	if cred.RevokedUnixNano != 0 || (cred.ExpiresUnixNano != 0 && cred.ExpiresUnixNano <= now) {
		return principal{}, false
	}
	return principal{actor: fmt.Sprintf("%s (%s)", cred.Name, cred.Id), role: raft.RoleOf(cred), tenant: cred.Tenant, credID: cred.Id}, true
}

// newAdminCredToken returns a new credential id and its token.
func newAdminCredToken() (id, token string, err error) {
	var b [8 + 32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", err
	}
	id = hex.EncodeToString(b[:8])
	return id, adminTokenPrefix + id + "_" + hex.EncodeToString(b[8:]), nil
}

// ----- authorization -----

// readOnlyMethod reports whether an admin or cluster-admin method changes
// nothing.
func readOnlyMethod(method string) bool {
	return strings.HasPrefix(method, "Get") || strings.HasPrefix(method, "List") ||
		method == "VerifyAudit" || method == "Status"
}

// credentialMethods are for the admin role alone.
var credentialMethods = map[string]bool{
	"CreateAdminCredential": true, "ListAdminCredentials": true, "RevokeAdminCredential": true,
}

// requestTenant is the tenant a request is about: its "tenant" field, or
// the "id" of a tenant request.
func requestTenant(method string, msg proto.Message) string {
	if msg == nil {
		return ""
	}
	m := msg.ProtoReflect()
	fields := m.Descriptor().Fields()
	if fd := fields.ByName("tenant"); fd != nil && fd.Kind() == protoreflect.StringKind {
		return m.Get(fd).String()
	}
	if strings.HasSuffix(method, "Tenant") {
		if fd := fields.ByName("id"); fd != nil && fd.Kind() == protoreflect.StringKind {
			return m.Get(fd).String()
		}
	}
	return ""
}

// requestTarget names what a request acts on, for the audit log: the
// tenant and the first identifying field it has.
func requestTarget(method string, msg proto.Message) string {
	tenant := requestTenant(method, msg)
	if msg == nil {
		return tenant
	}
	m := msg.ProtoReflect()
	fields := m.Descriptor().Fields()
	// The audit log is hash-chained and never edited, so it must hold no
	// personal data that a user delete erases (right to erasure): of a
	// user request only a user id (u_…) names the target, never a
	// username, e-mail or name.
	userMethod := strings.Contains(method, "User")
	for _, name := range []protoreflect.Name{"client_id", "user", "user_id", "jti", "id", "name", "to", "kid"} {
		fd := fields.ByName(name)
		if fd == nil || fd.Kind() != protoreflect.StringKind {
			continue
		}
		v := m.Get(fd).String()
		if v == "" || (name == "id" && strings.HasSuffix(method, "Tenant")) {
			continue
		}
		if userMethod && (name == "name" || !strings.HasPrefix(v, "u_")) {
			continue
		}
		if tenant != "" {
			return tenant + "/" + v
		}
		return v
	}
	return tenant
}

// authorize decides whether p may call method of service ("admin" or
// "cluster") with msg.
func authorize(p principal, service, method string, msg proto.Message) error {
	deny := func(why string) error {
		return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("role %s: %s", p.role, why))
	}
	if credentialMethods[method] && p.role != raft.RoleAdmin {
		return deny("admin credentials are managed by the admin role")
	}
	switch p.role {
	case raft.RoleAdmin:
		return nil
	case raft.RoleAuditor:
		if readOnlyMethod(method) {
			return nil
		}
		return deny("read-only")
	case raft.RoleOperator:
		if service == "cluster" || readOnlyMethod(method) {
			return nil
		}
		return deny("cluster operations and reads only")
	case raft.RoleTenantAdmin:
		if service != "admin" {
			return deny("no cluster operations")
		}
		if method == "ListAudit" || method == "VerifyAudit" {
			return nil // ListAudit is filtered to the tenant by the handler
		}
		if method == "CreateTenant" || method == "ListTenants" {
			return deny("tenants are created and listed by the admin role")
		}
		if t := requestTenant(method, msg); t != p.tenant {
			return deny(fmt.Sprintf("limited to tenant %q", p.tenant))
		}
		return nil
	}
	return deny("unknown role")
}

// adminGuard authenticates, authorizes and audits the unary calls of the
// admin ("admin") or cluster-admin ("cluster") service.
func (n *Node) adminGuard(auth adminAuth, service string) connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			p, ok := auth.principal(req.Header().Get("Authorization"))
			if !ok {
				return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("admin credential missing or wrong"))
			}
			method := path.Base(req.Spec().Procedure)
			msg, _ := req.Any().(proto.Message)
			audited := !readOnlyMethod(method)
			if err := authorize(p, service, method, msg); err != nil {
				if audited {
					n.audit(p, service, method, msg, "denied: "+connect.CodeOf(err).String())
				}
				return nil, err
			}
			res, err := next(context.WithValue(ctx, principalKey{}, p), req)
			if audited {
				outcome := "success"
				if err != nil {
					outcome = "failure: " + connect.CodeOf(err).String()
				}
				n.audit(p, service, method, msg, outcome)
			}
			return res, err
		}
	}
}

// threatReady caches that every member applies the issue-13 operations.
type threatReady struct {
	ok atomic.Bool
	// siemStop stops the SIEM exporter and waits for it (siem.go).
	siemStop func()
	// alertStop stops the alert proposer and waits for it (alerts.go).
	alertStop func()
	// scopeStop stops the scope-use workers and waits for them (scopes.go).
	scopeStop func()
}

func (n *Node) threatSupported(ctx context.Context) bool {
	if n.threat.ok.Load() {
		return true
	}
	if n.cl == nil || !n.cl.allSupport(ctx, featureThreat) {
		return false
	}
	n.threat.ok.Store(true)
	return true
}

// audit appends one record to the audit log. A call is audited after it
// ran; the record is written with its own deadline, so a caller that went
// away still leaves its trace.
func (n *Node) audit(p principal, service, method string, msg proto.Message, outcome string) {
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.WriteTimeout)
	defer cancel()
	action := method
	if service == "cluster" {
		action = "cluster." + method
	}
	rec := &raftpb.AuditRecord{
		Actor: p.actor, Role: p.role, Action: action, Target: requestTarget(method, msg),
		Tenant: requestTenant(method, msg), Outcome: outcome, Node: n.cfg.NodeID,
	}
	if !n.threatSupported(ctx) {
		n.log.Warn("audit: not every member supports the audit log yet; call not recorded",
			"actor", rec.Actor, "action", rec.Action, "target", rec.Target, "outcome", rec.Outcome)
		return
	}
	if _, err := n.rep.propose(ctx, &raftpb.Command{Op: &raftpb.Command_AppendAudit{AppendAudit: &raftpb.AppendAudit{Record: rec}}}); err != nil {
		n.log.Error("audit: record not written", "err", err,
			"actor", rec.Actor, "action", rec.Action, "target", rec.Target, "outcome", rec.Outcome)
	}
}

// ----- admin API: credentials -----

func adminCredentialPB(c *raftpb.AdminCredential, now time.Time) *adminv1.AdminCredential {
	active := c.RevokedUnixNano == 0 && (c.ExpiresUnixNano == 0 || c.ExpiresUnixNano > now.UnixNano())
	return &adminv1.AdminCredential{
		Id: c.Id, Name: c.Name, Role: raft.RoleOf(c), Tenant: c.Tenant,
		CreatedAt: ts(c.CreatedUnixNano), ExpiresAt: ts(c.ExpiresUnixNano), RevokedAt: ts(c.RevokedUnixNano),
		CreatedBy: c.CreatedBy, Active: active,
	}
}

func (a *adminService) CreateAdminCredential(ctx context.Context, req *connect.Request[adminv1.CreateAdminCredentialRequest]) (*connect.Response[adminv1.CreateAdminCredentialResponse], error) {
	m := req.Msg
	if m.Name == "" || len(m.Name) > maxNameLen {
		return nil, invalid("name: want 1-%d characters", maxNameLen)
	}
	switch m.Role {
	case raft.RoleAdmin, raft.RoleOperator, raft.RoleAuditor:
		if m.Tenant != "" {
			return nil, invalid("--tenant is for the tenant-admin role")
		}
	case raft.RoleTenantAdmin:
		if _, ok := a.rep.rn.State().Tenant(m.Tenant); !ok {
			return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("tenant %q not found", m.Tenant))
		}
	default:
		return nil, invalid("role %q: want admin, operator, tenant-admin or auditor", m.Role)
	}
	if a.threatOK != nil && !a.threatOK(ctx) {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("not every cluster member supports admin credentials yet; upgrade them first"))
	}
	id, token, err := newAdminCredToken()
	if err != nil {
		return nil, connectError(err)
	}
	now := a.now()
	c := &raftpb.AdminCredential{Id: id, Name: m.Name, Role: m.Role, Tenant: m.Tenant, TokenHash: a.kek.HashSecret(token), CreatedUnixNano: now.UnixNano()}
	switch {
	case m.TtlSeconds == 0:
		c.ExpiresUnixNano = now.Add(defaultAdminCredentialTTL).UnixNano()
	case m.TtlSeconds > 0:
		c.ExpiresUnixNano = now.Add(time.Duration(min(m.TtlSeconds, 10*365*24*3600)) * time.Second).UnixNano()
	}
	if p, ok := principalFrom(ctx); ok {
		c.CreatedBy = p.actor
	}
	if err := a.propose(ctx, &raftpb.Command{Op: &raftpb.Command_PutAdminCredential{PutAdminCredential: &raftpb.PutAdminCredential{Credential: c}}}); err != nil {
		return nil, err
	}
	c.TokenHash = nil
	return connect.NewResponse(&adminv1.CreateAdminCredentialResponse{Credential: adminCredentialPB(c, now), Token: token}), nil
}

func (a *adminService) ListAdminCredentials(context.Context, *connect.Request[adminv1.ListAdminCredentialsRequest]) (*connect.Response[adminv1.ListAdminCredentialsResponse], error) {
	creds, err := a.rep.rn.FSM().AdminCredentials()
	if err != nil {
		return nil, connectError(err)
	}
	now := a.now()
	out := make([]*adminv1.AdminCredential, 0, len(creds))
	for _, c := range creds {
		out = append(out, adminCredentialPB(c, now))
	}
	return connect.NewResponse(&adminv1.ListAdminCredentialsResponse{Credentials: out}), nil
}

func (a *adminService) RevokeAdminCredential(ctx context.Context, req *connect.Request[adminv1.RevokeAdminCredentialRequest]) (*connect.Response[adminv1.RevokeAdminCredentialResponse], error) {
	creds, err := a.rep.rn.FSM().AdminCredentials()
	if err != nil {
		return nil, connectError(err)
	}
	// By id, else by the name of the active credential.
	var id string
	for _, c := range creds {
		if c.Id == req.Msg.Id {
			id = c.Id
		}
	}
	if id == "" {
		for _, c := range creds {
			if c.Name == req.Msg.Id && c.RevokedUnixNano == 0 {
				id = c.Id
			}
		}
	}
	if id == "" {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("admin credential %q not found", req.Msg.Id))
	}
	if err := a.propose(ctx, &raftpb.Command{Op: &raftpb.Command_RevokeAdminCredential{RevokeAdminCredential: &raftpb.RevokeAdminCredential{Id: id}}}); err != nil {
		return nil, err
	}
	c, ok := a.rep.rn.FSM().AdminCredential(id)
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("admin credential %q not found", id))
	}
	return connect.NewResponse(&adminv1.RevokeAdminCredentialResponse{Credential: adminCredentialPB(c, a.now())}), nil
}
