package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"connectrpc.com/connect"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
)

func (f *fakeAdmin) SetTenantTrust(ctx context.Context, r *connect.Request[adminv1.SetTenantTrustRequest]) (*connect.Response[adminv1.SetTenantTrustResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.SetTenantTrustResponse{Trust: r.Msg.GetTrust()}), nil
}

func (f *fakeAdmin) GetTenantTrust(ctx context.Context, r *connect.Request[adminv1.GetTenantTrustRequest]) (*connect.Response[adminv1.GetTenantTrustResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.GetTenantTrustResponse{Trust: &adminv1.TenantTrust{}}), nil
}

func TestAdminClientAuthMethods(t *testing.T) {
	fake, url := newFakeAdmin(t)
	dir := t.TempDir()
	jwks := filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(jwks, []byte(`{"keys":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runTally(t, serverEnv(url), "", "admin", "client", "create", "--name", "svc",
		"--auth-method", "private_key_jwt", "--auth-method", "tls_client_auth", "--jwks-file", jwks, "--tls-subject-dn", "CN=svc")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	calls := fake.recorded()
	got := calls[len(calls)-1].msg.(*adminv1.CreateClientRequest).GetAuth()
	want := &adminv1.ClientAuth{Methods: []string{"private_key_jwt", "tls_client_auth"}, Jwks: `{"keys":[]}`, TlsSubjectDn: "CN=svc"}
	if !proto.Equal(got, want) {
		t.Fatalf("auth %v, want %v", got, want)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--auth-method", "client_secret_jwt"}, "--auth-method \"client_secret_jwt\""},
		{[]string{"--auth-method", "private_key_jwt"}, "needs --jwks-file or --jwks-uri"},
		{[]string{"--auth-method", "tls_client_auth"}, "needs --tls-subject-dn"},
		{[]string{"--auth-method", "self_signed_tls_client_auth", "--jwks-uri", "https://x"}, "needs --jwks-file"},
		{[]string{"--public", "--auth-method", "private_key_jwt", "--jwks-uri", "https://x"}, "a --public client"},
	} {
		args := append([]string{"admin", "client", "create", "--name", "svc"}, tc.args...)
		r := runTally(t, serverEnv(url), "", args...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q, want %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
	r = runTally(t, serverEnv(url), "", "admin", "trust", "federation-add", "--name", "k8s", "--issuer", "https://k8s.example",
		"--subject", "system:serviceaccount:payments:billing=c-1")
	if r.code != 0 {
		t.Fatalf("federation-add: exit %d: %s", r.code, r.stderr)
	}
	calls = fake.recorded()
	set := calls[len(calls)-1].msg.(*adminv1.SetTenantTrustRequest)
	if f := set.GetTrust().GetFederations(); len(f) != 1 || f[0].GetSubjects()[0].GetSubject() != "system:serviceaccount:payments:billing" || f[0].GetSubjects()[0].GetClientId() != "c-1" {
		t.Fatalf("trust %v", set.GetTrust())
	}
}
