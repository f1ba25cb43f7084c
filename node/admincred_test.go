package node_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/api/admin/v1/adminv1connect"
	clusterv1 "github.com/tallyauth/tally/node/api/cluster/v1"
	"github.com/tallyauth/tally/node/api/cluster/v1/clusterv1connect"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

type bearerAuth string

func (b bearerAuth) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Authorization", "Bearer "+string(b))
		return next(ctx, req)
	}
}
func (b bearerAuth) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}
func (b bearerAuth) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

func adminAs(n *nodetest.Node, token string) adminv1connect.AdminServiceClient {
	return adminv1connect.NewAdminServiceClient(http.DefaultClient, n.URL(), connect.WithInterceptors(bearerAuth(token)))
}

func wantCode(t *testing.T, what string, err error, code connect.Code) {
	t.Helper()
	if connect.CodeOf(err) != code {
		t.Fatalf("%s: got %v, want %v", what, err, code)
	}
}

// TestNamedAdminCredentials: credentials per role work wherever the admin
// token does, within their role; revoked ones stop at once; every change
// (and refused change) is in the audit log with its actor, the chain
// verifies, and its records are on the event log.
func TestNamedAdminCredentials(t *testing.T) {
	n := nodetest.Start(t)
	ctx := context.Background()
	root := n.Admin
	if _, err := root.CreateTenant(ctx, connect.NewRequest(&adminv1.CreateTenantRequest{Id: "acme"})); err != nil {
		t.Fatal(err)
	}
	tokens := map[string]string{}
	for _, c := range []struct{ name, role, tenant string }{
		{"alice", "admin", ""}, {"ci", "operator", ""}, {"acme-ops", "tenant-admin", "acme"}, {"siem", "auditor", ""},
	} {
		res, err := root.CreateAdminCredential(ctx, connect.NewRequest(&adminv1.CreateAdminCredentialRequest{Name: c.name, Role: c.role, Tenant: c.tenant}))
		if err != nil {
			t.Fatalf("create %s: %v", c.name, err)
		}
		if !strings.HasPrefix(res.Msg.Token, "tadm_") || !res.Msg.Credential.Active || res.Msg.Credential.ExpiresAt == nil {
			t.Fatalf("create %s: %v", c.name, res.Msg.Credential)
		}
		tokens[c.role] = res.Msg.Token
	}
	// Same name twice while active: refused.
	_, err := root.CreateAdminCredential(ctx, connect.NewRequest(&adminv1.CreateAdminCredentialRequest{Name: "alice", Role: "admin"}))
	wantCode(t, "duplicate name", err, connect.CodeAlreadyExists)
	// No token hash or token in the listing.
	list, err := root.ListAdminCredentials(ctx, connect.NewRequest(&adminv1.ListAdminCredentialsRequest{}))
	if err != nil || len(list.Msg.Credentials) != 4 {
		t.Fatalf("list: %v %v", list, err)
	}
	for _, tok := range tokens {
		b, _ := proto.Marshal(list.Msg)
		if strings.Contains(string(b), tok) {
			t.Fatal("a token is in the listing")
		}
	}
	// The roles as created; stored with their typed role (raft/enums_v3.go)
	// once the node has recorded the cluster version.
	for _, c := range list.Msg.Credentials {
		if tokens[c.Role] == "" || !strings.Contains(tokens[c.Role], c.Id) {
			t.Fatalf("listed %v", c)
		}
	}
	nodetest.CheckFor(t, nodetest.Timeout, 20*time.Millisecond, func() error {
		creds, err := n.Raft().FSM().AdminCredentials()
		if err != nil {
			return err
		}
		for _, c := range creds {
			if c.GetRoleValue() <= raftpb.AdminRole_ADMIN_ROLE_OTHER || raft.RoleOf(c) != c.GetRole() {
				return fmt.Errorf("stored credential %v", c)
			}
		}
		return nil
	})

	auditor := adminAs(n, tokens["auditor"])
	if _, err := auditor.ListTenants(ctx, connect.NewRequest(&adminv1.ListTenantsRequest{})); err != nil {
		t.Fatalf("auditor list: %v", err)
	}
	_, err = auditor.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{Tenant: "acme", Name: "x"}))
	wantCode(t, "auditor create client", err, connect.CodePermissionDenied)

	tadmin := adminAs(n, tokens["tenant-admin"])
	cc, err := tadmin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{Tenant: "acme", Name: "svc"}))
	if err != nil {
		t.Fatalf("tenant-admin create client in its tenant: %v", err)
	}
	_, err = tadmin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{Tenant: "default", Name: "svc"}))
	wantCode(t, "tenant-admin in another tenant", err, connect.CodePermissionDenied)
	_, err = tadmin.CreateTenant(ctx, connect.NewRequest(&adminv1.CreateTenantRequest{Id: "evil"}))
	wantCode(t, "tenant-admin create tenant", err, connect.CodePermissionDenied)
	_, err = tadmin.CreateAdminCredential(ctx, connect.NewRequest(&adminv1.CreateAdminCredentialRequest{Name: "x", Role: "admin"}))
	wantCode(t, "tenant-admin create credential", err, connect.CodePermissionDenied)

	op := adminAs(n, tokens["operator"])
	_, err = op.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{Tenant: "acme", Name: "x"}))
	wantCode(t, "operator create client", err, connect.CodePermissionDenied)
	opCluster := clusterv1connect.NewClusterAdminServiceClient(http.DefaultClient, n.URL(), connect.WithInterceptors(bearerAuth(tokens["operator"])))
	if _, err := opCluster.Status(ctx, connect.NewRequest(&clusterv1.StatusRequest{})); err != nil {
		t.Fatalf("operator cluster status: %v", err)
	}
	taCluster := clusterv1connect.NewClusterAdminServiceClient(http.DefaultClient, n.URL(), connect.WithInterceptors(bearerAuth(tokens["tenant-admin"])))
	_, err = taCluster.Status(ctx, connect.NewRequest(&clusterv1.StatusRequest{}))
	wantCode(t, "tenant-admin cluster status", err, connect.CodePermissionDenied)

	alice := adminAs(n, tokens["admin"])
	if _, err := alice.RevokeAdminCredential(ctx, connect.NewRequest(&adminv1.RevokeAdminCredentialRequest{Id: "siem"})); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	_, err = auditor.ListTenants(ctx, connect.NewRequest(&adminv1.ListTenantsRequest{}))
	wantCode(t, "revoked credential", err, connect.CodeUnauthenticated)
	_, err = adminAs(n, tokens["admin"]+"x").ListTenants(ctx, connect.NewRequest(&adminv1.ListTenantsRequest{}))
	wantCode(t, "wrong secret", err, connect.CodeUnauthenticated)

	// The audit log.
	recs, err := root.ListAudit(ctx, connect.NewRequest(&adminv1.ListAuditRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	find := func(actorPrefix, action, outcome string) *adminv1.AuditRecord {
		for _, r := range recs.Msg.Records {
			if strings.HasPrefix(r.Actor, actorPrefix) && r.Action == action && r.Outcome == outcome {
				return r
			}
		}
		t.Fatalf("no audit record %s %s %s in %v", actorPrefix, action, outcome, recs.Msg.Records)
		return nil
	}
	find("bootstrap-token", "CreateTenant", "success")
	find("bootstrap-token", "CreateAdminCredential", "success")
	if r := find("acme-ops (", "CreateClient", "success"); r.Target != "acme/"+cc.Msg.Client.ClientId && r.Target != "acme/svc" {
		t.Errorf("target %q", r.Target)
	}
	find("acme-ops (", "CreateClient", "denied: permission_denied")
	find("siem (", "CreateClient", "denied: permission_denied")
	find("alice (", "RevokeAdminCredential", "success")
	for _, r := range recs.Msg.Records {
		if r.Hash == "" || r.Time == nil || r.Role == "" {
			t.Fatalf("incomplete record %v", r)
		}
		if strings.Contains(r.Target, "tadm_") {
			t.Fatal("a token in the audit log")
		}
	}
	// tenant-admin sees its tenant's records only.
	mine, err := tadmin.ListAudit(ctx, connect.NewRequest(&adminv1.ListAuditRequest{}))
	if err != nil || len(mine.Msg.Records) == 0 {
		t.Fatalf("tenant-admin audit list: %v %v", mine, err)
	}
	for _, r := range mine.Msg.Records {
		if r.Tenant != "acme" {
			t.Fatalf("tenant-admin sees %v", r)
		}
	}
	_, err = auditor.VerifyAudit(ctx, connect.NewRequest(&adminv1.VerifyAuditRequest{}))
	wantCode(t, "revoked auditor verify", err, connect.CodeUnauthenticated)
	v, err := root.VerifyAudit(ctx, connect.NewRequest(&adminv1.VerifyAuditRequest{}))
	if err != nil || !v.Msg.Intact || v.Msg.Records != uint64(len(recs.Msg.Records)) {
		t.Fatalf("verify: %v %v", v, err)
	}

	// Published on the event log.
	evs, err := n.Raft().EventsSince(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	audits := 0
	for _, ev := range evs {
		if ev.Kind == raftpb.EventKind_EVENT_KIND_ADMIN_AUDIT {
			audits++
		}
	}
	if audits != len(recs.Msg.Records) {
		t.Fatalf("%d audit events, %d records", audits, len(recs.Msg.Records))
	}
	// ... and published to the event stream (the publisher gets past them).
	last := evs[len(evs)-1].Index
	nodetest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if p := n.Publisher().Position(); p < last {
			return fmt.Errorf("publisher at %d, last event %d", p, last)
		}
		return nil
	})

	// Tampering with a copy of the state is detected at that record.
	path := filepath.Join(t.TempDir(), "state.db")
	cp, err := n.Raft().CopyState()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cp.WriteTo(f); err != nil {
		t.Fatal(err)
	}
	cp.Close()
	f.Close()
	good, err := raft.ReadAuditDB(path)
	if err != nil || raft.VerifyAuditChain(good) != nil || len(good) != len(recs.Msg.Records) {
		t.Fatalf("copy: %d records, %v", len(good), err)
	}
	tamperAudit(t, path, 3, func(r *raftpb.AuditRecord) { r.Actor = "someone-else" })
	bad, err := raft.ReadAuditDB(path)
	if err != nil {
		t.Fatal(err)
	}
	if b := raft.VerifyAuditChain(bad); b == nil || b.Seq != 3 {
		t.Fatalf("tampered record 3: %+v", b)
	}
}

// tamperAudit rewrites audit record seq of a state database copy.
func tamperAudit(t *testing.T, path string, seq uint64, edit func(*raftpb.AuditRecord)) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("threat_audit"))
		if b == nil {
			return errors.New("no audit bucket")
		}
		k := make([]byte, 8)
		for i := range 8 {
			k[7-i] = byte(seq >> (8 * i))
		}
		r := new(raftpb.AuditRecord)
		if err := proto.Unmarshal(b.Get(k), r); err != nil {
			return err
		}
		edit(r)
		v, err := proto.Marshal(r)
		if err != nil {
			return err
		}
		return b.Put(k, v)
	})
	if err != nil {
		t.Fatal(err)
	}
}
