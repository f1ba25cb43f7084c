package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/api/admin/v1/adminv1connect"
)

// fakeAdmin is a hand-written admin service: it records every request it
// gets and answers with canned objects built from the request.
type fakeAdmin struct {
	// The issue-13 calls are not faked.
	adminv1connect.UnimplementedAdminServiceHandler

	mu       sync.Mutex
	calls    []adminCall
	err      error         // when set, every call fails with it
	block    bool          // when set, calls wait for their context to end
	tenants  int           // how many tenants ListTenants returns
	tenantDN string        // display name of canned tenants
	released chan struct{} // closed at cleanup so blocked calls return
}

type adminCall struct {
	procedure string
	auth      string
	msg       proto.Message
}

const (
	fakeSecret   = "tsec_0123456789abcdef"
	fakeClientID = "c-7f3a"
)

var fakeTime = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func (f *fakeAdmin) record(ctx context.Context, spec connect.Spec, h http.Header, msg proto.Message) error {
	f.mu.Lock()
	f.calls = append(f.calls, adminCall{procedure: spec.Procedure, auth: h.Get("Authorization"), msg: proto.Clone(msg)})
	err, block := f.err, f.block
	f.mu.Unlock()
	if block {
		select {
		case <-ctx.Done():
			return connect.NewError(connect.CodeDeadlineExceeded, ctx.Err())
		case <-f.released:
			return connect.NewError(connect.CodeCanceled, errors.New("test over"))
		}
	}
	return err
}

func (f *fakeAdmin) recorded() []adminCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]adminCall(nil), f.calls...)
}

func (f *fakeAdmin) tenant(id string) *adminv1.Tenant {
	return &adminv1.Tenant{
		Id: id, DisplayName: f.tenantDN, Issuer: "https://issuer.example/t/" + id,
		CreatedAt: timestamppb.New(fakeTime), SigningAlg: "ES256",
	}
}

func fakeClient(tenant, id string) *adminv1.Client {
	return &adminv1.Client{
		Tenant: tenant, ClientId: id, Name: "orders",
		GrantTypes: []string{"client_credentials"}, Scopes: []string{"read:orders", "write:orders"},
		Audiences: []string{"https://orders.example"}, AccessTokenTtlSeconds: 600, TokenFormat: "jwt",
		CreatedAt: timestamppb.New(fakeTime), UpdatedAt: timestamppb.New(fakeTime.Add(time.Hour)),
		Revision: 3, ActiveSecrets: 1,
	}
}

func fakeKeys() []*adminv1.Key {
	return []*adminv1.Key{
		{Kid: "k1", Alg: "ES256", Use: "sig", State: "active", CreatedAt: timestamppb.New(fakeTime), NotBefore: timestamppb.New(fakeTime)},
		{Kid: "k2", Alg: "ES256", Use: "sig", State: "pending", CreatedAt: timestamppb.New(fakeTime.Add(time.Hour)), NotBefore: timestamppb.New(fakeTime.Add(2 * time.Hour))},
	}
}

func fakeRevocation(tenant string) *adminv1.Revocation {
	return &adminv1.Revocation{
		Tenant: tenant, Jti: "j-1", ClientId: fakeClientID, RevokedAt: timestamppb.New(fakeTime),
		ExpiresAt: timestamppb.New(fakeTime.Add(10 * time.Minute)), Reason: "leaked",
	}
}

func (f *fakeAdmin) CreateTenant(ctx context.Context, r *connect.Request[adminv1.CreateTenantRequest]) (*connect.Response[adminv1.CreateTenantResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.CreateTenantResponse{Tenant: f.tenant(r.Msg.GetId())}), nil
}

func (f *fakeAdmin) GetTenant(ctx context.Context, r *connect.Request[adminv1.GetTenantRequest]) (*connect.Response[adminv1.GetTenantResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.GetTenantResponse{Tenant: f.tenant(r.Msg.GetId())}), nil
}

func (f *fakeAdmin) ListTenants(ctx context.Context, r *connect.Request[adminv1.ListTenantsRequest]) (*connect.Response[adminv1.ListTenantsResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	res := &adminv1.ListTenantsResponse{}
	for _, id := range []string{"acme", "default", "globex"}[:f.tenants] {
		res.Tenants = append(res.Tenants, f.tenant(id))
	}
	return connect.NewResponse(res), nil
}

func (f *fakeAdmin) CreateClient(ctx context.Context, r *connect.Request[adminv1.CreateClientRequest]) (*connect.Response[adminv1.CreateClientResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	secret := fakeSecret
	if r.Msg.GetPublic() {
		secret = ""
	}
	return connect.NewResponse(&adminv1.CreateClientResponse{Client: fakeClient(r.Msg.GetTenant(), fakeClientID), ClientSecret: secret}), nil
}

func (f *fakeAdmin) GetClient(ctx context.Context, r *connect.Request[adminv1.GetClientRequest]) (*connect.Response[adminv1.GetClientResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.GetClientResponse{Client: fakeClient(r.Msg.GetTenant(), r.Msg.GetClientId())}), nil
}

func (f *fakeAdmin) ListClients(ctx context.Context, r *connect.Request[adminv1.ListClientsRequest]) (*connect.Response[adminv1.ListClientsResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.ListClientsResponse{Clients: []*adminv1.Client{
		fakeClient(r.Msg.GetTenant(), "c-1"), fakeClient(r.Msg.GetTenant(), "c-2"),
	}}), nil
}

func (f *fakeAdmin) UpdateClient(ctx context.Context, r *connect.Request[adminv1.UpdateClientRequest]) (*connect.Response[adminv1.UpdateClientResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.UpdateClientResponse{Client: fakeClient(r.Msg.GetTenant(), r.Msg.GetClientId())}), nil
}

func (f *fakeAdmin) DisableClient(ctx context.Context, r *connect.Request[adminv1.DisableClientRequest]) (*connect.Response[adminv1.DisableClientResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	c := fakeClient(r.Msg.GetTenant(), r.Msg.GetClientId())
	c.Disabled = true
	return connect.NewResponse(&adminv1.DisableClientResponse{Client: c}), nil
}

func (f *fakeAdmin) EnableClient(ctx context.Context, r *connect.Request[adminv1.EnableClientRequest]) (*connect.Response[adminv1.EnableClientResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.EnableClientResponse{Client: fakeClient(r.Msg.GetTenant(), r.Msg.GetClientId())}), nil
}

func (f *fakeAdmin) RotateClientSecret(ctx context.Context, r *connect.Request[adminv1.RotateClientSecretRequest]) (*connect.Response[adminv1.RotateClientSecretResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	c := fakeClient(r.Msg.GetTenant(), r.Msg.GetClientId())
	c.ActiveSecrets = 2
	c.PreviousSecretExpiresAt = timestamppb.New(fakeTime.Add(24 * time.Hour))
	return connect.NewResponse(&adminv1.RotateClientSecretResponse{Client: c, ClientSecret: fakeSecret}), nil
}

func (f *fakeAdmin) ListKeys(ctx context.Context, r *connect.Request[adminv1.ListKeysRequest]) (*connect.Response[adminv1.ListKeysResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.ListKeysResponse{Keys: fakeKeys()}), nil
}

func (f *fakeAdmin) RotateKeys(ctx context.Context, r *connect.Request[adminv1.RotateKeysRequest]) (*connect.Response[adminv1.RotateKeysResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.RotateKeysResponse{Keys: fakeKeys()}), nil
}

func (f *fakeAdmin) RevokeToken(ctx context.Context, r *connect.Request[adminv1.RevokeTokenRequest]) (*connect.Response[adminv1.RevokeTokenResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.RevokeTokenResponse{Revocation: fakeRevocation(r.Msg.GetTenant())}), nil
}

func (f *fakeAdmin) ListRevocations(ctx context.Context, r *connect.Request[adminv1.ListRevocationsRequest]) (*connect.Response[adminv1.ListRevocationsResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.ListRevocationsResponse{Revocations: []*adminv1.Revocation{fakeRevocation(r.Msg.GetTenant())}}), nil
}

// newFakeAdmin serves a fakeAdmin over real HTTP on 127.0.0.1 and returns
// it with its base URL.
func newFakeAdmin(t testing.TB) (*fakeAdmin, string) {
	t.Helper()
	f := &fakeAdmin{tenants: 2, tenantDN: "Acme Corp", released: make(chan struct{})}
	mux := http.NewServeMux()
	mux.Handle(adminv1connect.NewAdminServiceHandler(f))
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		close(f.released)
		srv.Close()
	})
	return f, srv.URL
}

type adminResult struct {
	code           int
	stdout, stderr string
}

// runTally runs "tally args…" with the given environment and stdin.
func runTally(t testing.TB, vars map[string]string, stdin string, args ...string) adminResult {
	t.Helper()
	var stdout, stderr bytes.Buffer
	e := env{
		stdin:  strings.NewReader(stdin),
		stdout: &stdout,
		stderr: &stderr,
		getenv: func(k string) string { return vars[k] },
	}
	code := run(context.Background(), args, e)
	return adminResult{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// serverEnv points the CLI at url with the token "tok" through the
// environment.
func serverEnv(url string) map[string]string {
	return map[string]string{"TALLY_SERVER": url, "TALLY_ADMIN_TOKEN": "tok"}
}

func TestAdminRequests(t *testing.T) {
	expires := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name      string
		args      []string
		stdin     string
		procedure string
		want      proto.Message
	}{
		{
			name:      "tenant create",
			args:      []string{"tenant", "create", "--name", "acme", "--display-name", "Acme Corp", "--signing-alg", "EdDSA"},
			procedure: adminv1connect.AdminServiceCreateTenantProcedure,
			want:      &adminv1.CreateTenantRequest{Id: "acme", DisplayName: "Acme Corp", SigningAlg: "EdDSA"},
		},
		{
			name:      "tenant create minimal",
			args:      []string{"tenant", "create", "-name=acme"},
			procedure: adminv1connect.AdminServiceCreateTenantProcedure,
			want:      &adminv1.CreateTenantRequest{Id: "acme"},
		},
		{
			name:      "tenant get flags before id",
			args:      []string{"tenant", "get", "--output", "json", "acme"},
			procedure: adminv1connect.AdminServiceGetTenantProcedure,
			want:      &adminv1.GetTenantRequest{Id: "acme"},
		},
		{
			name:      "tenant get flags after id",
			args:      []string{"tenant", "get", "acme", "--output", "json"},
			procedure: adminv1connect.AdminServiceGetTenantProcedure,
			want:      &adminv1.GetTenantRequest{Id: "acme"},
		},
		{
			name:      "tenant get id after terminator",
			args:      []string{"tenant", "get", "--", "-odd"},
			procedure: adminv1connect.AdminServiceGetTenantProcedure,
			want:      &adminv1.GetTenantRequest{Id: "-odd"},
		},
		{
			name:      "tenant list",
			args:      []string{"tenant", "list"},
			procedure: adminv1connect.AdminServiceListTenantsProcedure,
			want:      &adminv1.ListTenantsRequest{},
		},
		{
			name:      "client create defaults",
			args:      []string{"client", "create", "--name", "svc"},
			procedure: adminv1connect.AdminServiceCreateClientProcedure,
			want:      &adminv1.CreateClientRequest{Tenant: "default", Name: "svc", GrantTypes: []string{"client_credentials"}},
		},
		{
			name: "client create everything",
			args: []string{
				"client", "create", "--tenant", "acme", "--name", "orders",
				"--grant", "client_credentials", "--grant", "refresh_token",
				"--scope", "read:orders  write:orders", "--scope", "admin", "--scope", "read:orders",
				"--audience", "https://a.example", "--audience", "https://b.example",
				"--ttl", "10m", "--format", "opaque", "--public",
				"--redirect-uri", "https://app.example/cb", "--redirect-uri", "https://app.example/cb2",
			},
			procedure: adminv1connect.AdminServiceCreateClientProcedure,
			want: &adminv1.CreateClientRequest{
				Tenant: "acme", Name: "orders",
				GrantTypes:            []string{"client_credentials", "refresh_token"},
				Scopes:                []string{"read:orders", "write:orders", "admin"},
				Audiences:             []string{"https://a.example", "https://b.example"},
				AccessTokenTtlSeconds: 600, TokenFormat: "opaque", Public: true,
				RedirectUris: []string{"https://app.example/cb", "https://app.example/cb2"},
			},
		},
		{
			name:      "client create ttl in seconds",
			args:      []string{"client", "create", "--name", "svc", "--ttl", "1h0m30s"},
			procedure: adminv1connect.AdminServiceCreateClientProcedure,
			want:      &adminv1.CreateClientRequest{Tenant: "default", Name: "svc", GrantTypes: []string{"client_credentials"}, AccessTokenTtlSeconds: 3630},
		},
		{
			name:      "client get",
			args:      []string{"client", "get", "--tenant", "acme", "c-1"},
			procedure: adminv1connect.AdminServiceGetClientProcedure,
			want:      &adminv1.GetClientRequest{Tenant: "acme", ClientId: "c-1"},
		},
		{
			name:      "client get tenant after id",
			args:      []string{"client", "get", "c-1", "--tenant", "acme"},
			procedure: adminv1connect.AdminServiceGetClientProcedure,
			want:      &adminv1.GetClientRequest{Tenant: "acme", ClientId: "c-1"},
		},
		{
			name:      "client list default tenant",
			args:      []string{"client", "list"},
			procedure: adminv1connect.AdminServiceListClientsProcedure,
			want:      &adminv1.ListClientsRequest{Tenant: "default"},
		},
		{
			name:      "client update name only",
			args:      []string{"client", "update", "c-1", "--name", "renamed"},
			procedure: adminv1connect.AdminServiceUpdateClientProcedure,
			want:      &adminv1.UpdateClientRequest{Tenant: "default", ClientId: "c-1", Name: proto.String("renamed")},
		},
		{
			name:      "client update scopes ttl format revision",
			args:      []string{"client", "update", "--tenant", "acme", "c-1", "--scope", "a b", "--scope", "c", "--ttl", "90s", "--format", "jwt", "--expected-revision", "7"},
			procedure: adminv1connect.AdminServiceUpdateClientProcedure,
			want: &adminv1.UpdateClientRequest{
				Tenant: "acme", ClientId: "c-1",
				Scopes:                &adminv1.StringList{Values: []string{"a", "b", "c"}},
				AccessTokenTtlSeconds: proto.Int64(90), TokenFormat: proto.String("jwt"), ExpectedRevision: 7,
			},
		},
		{
			name:      "client update grants and redirect uris",
			args:      []string{"client", "update", "c-1", "--grant", "authorization_code", "--grant", "refresh_token", "--redirect-uri", "https://app.example/cb"},
			procedure: adminv1connect.AdminServiceUpdateClientProcedure,
			want: &adminv1.UpdateClientRequest{
				Tenant: "default", ClientId: "c-1",
				GrantTypes:   &adminv1.StringList{Values: []string{"authorization_code", "refresh_token"}},
				RedirectUris: &adminv1.StringList{Values: []string{"https://app.example/cb"}},
			},
		},
		{
			name:      "client update clears audiences",
			args:      []string{"client", "update", "c-1", "--audience="},
			procedure: adminv1connect.AdminServiceUpdateClientProcedure,
			want:      &adminv1.UpdateClientRequest{Tenant: "default", ClientId: "c-1", Audiences: &adminv1.StringList{}},
		},
		{
			name:      "client update ttl zero is sent",
			args:      []string{"client", "update", "c-1", "--ttl", "0s"},
			procedure: adminv1connect.AdminServiceUpdateClientProcedure,
			want:      &adminv1.UpdateClientRequest{Tenant: "default", ClientId: "c-1", AccessTokenTtlSeconds: proto.Int64(0)},
		},
		{
			name:      "client disable",
			args:      []string{"client", "disable", "--tenant", "acme", "c-1"},
			procedure: adminv1connect.AdminServiceDisableClientProcedure,
			want:      &adminv1.DisableClientRequest{Tenant: "acme", ClientId: "c-1"},
		},
		{
			name:      "client enable",
			args:      []string{"client", "enable", "c-1", "--tenant=acme"},
			procedure: adminv1connect.AdminServiceEnableClientProcedure,
			want:      &adminv1.EnableClientRequest{Tenant: "acme", ClientId: "c-1"},
		},
		{
			name:      "client rotate-secret default overlap",
			args:      []string{"client", "rotate-secret", "c-1"},
			procedure: adminv1connect.AdminServiceRotateClientSecretProcedure,
			want:      &adminv1.RotateClientSecretRequest{Tenant: "default", ClientId: "c-1", OverlapSeconds: 86400},
		},
		{
			name:      "client rotate-secret overlap",
			args:      []string{"client", "rotate-secret", "--overlap", "1h30m", "c-1"},
			procedure: adminv1connect.AdminServiceRotateClientSecretProcedure,
			want:      &adminv1.RotateClientSecretRequest{Tenant: "default", ClientId: "c-1", OverlapSeconds: 5400},
		},
		{
			name:      "client rotate-secret no overlap",
			args:      []string{"client", "rotate-secret", "c-1", "--overlap", "0s"},
			procedure: adminv1connect.AdminServiceRotateClientSecretProcedure,
			want:      &adminv1.RotateClientSecretRequest{Tenant: "default", ClientId: "c-1"},
		},
		{
			name:      "key list",
			args:      []string{"key", "list", "--tenant", "acme"},
			procedure: adminv1connect.AdminServiceListKeysProcedure,
			want:      &adminv1.ListKeysRequest{Tenant: "acme"},
		},
		{
			name:      "key rotate server default delay",
			args:      []string{"key", "rotate", "--tenant", "acme"},
			procedure: adminv1connect.AdminServiceRotateKeysProcedure,
			want:      &adminv1.RotateKeysRequest{Tenant: "acme"},
		},
		{
			name:      "key rotate immediate",
			args:      []string{"key", "rotate", "--publish-delay", "0s"},
			procedure: adminv1connect.AdminServiceRotateKeysProcedure,
			want:      &adminv1.RotateKeysRequest{Tenant: "default", PublishDelaySeconds: proto.Int64(0)},
		},
		{
			name:      "key rotate alg and delay",
			args:      []string{"key", "rotate", "--alg", "EdDSA", "--publish-delay", "5m"},
			procedure: adminv1connect.AdminServiceRotateKeysProcedure,
			want:      &adminv1.RotateKeysRequest{Tenant: "default", SigningAlg: "EdDSA", PublishDelaySeconds: proto.Int64(300)},
		},
		{
			name:      "revoke token",
			args:      []string{"revoke", "--tenant", "acme", "--token", "eyJ.abc.def", "--reason", "leaked"},
			procedure: adminv1connect.AdminServiceRevokeTokenProcedure,
			want:      &adminv1.RevokeTokenRequest{Tenant: "acme", Token: "eyJ.abc.def", Reason: "leaked"},
		},
		{
			name:      "revoke token from stdin",
			args:      []string{"revoke", "--token-stdin"},
			stdin:     "  eyJ.from.stdin\n",
			procedure: adminv1connect.AdminServiceRevokeTokenProcedure,
			want:      &adminv1.RevokeTokenRequest{Tenant: "default", Token: "eyJ.from.stdin"},
		},
		{
			name:      "revoke by jti",
			args:      []string{"revoke", "--jti", "j-1", "--expires-at", "2030-01-02T04:04:05+01:00"},
			procedure: adminv1connect.AdminServiceRevokeTokenProcedure,
			want:      &adminv1.RevokeTokenRequest{Tenant: "default", Jti: "j-1", ExpiresAt: timestamppb.New(expires)},
		},
		{
			name:      "revocation list",
			args:      []string{"revocation", "list", "--tenant", "acme"},
			procedure: adminv1connect.AdminServiceListRevocationsProcedure,
			want:      &adminv1.ListRevocationsRequest{Tenant: "acme"},
		},
		{
			name:      "global flags before the command",
			args:      []string{"--output", "json", "--timeout", "5s", "client", "get", "c-1"},
			procedure: adminv1connect.AdminServiceGetClientProcedure,
			want:      &adminv1.GetClientRequest{Tenant: "default", ClientId: "c-1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake, url := newFakeAdmin(t)
			res := runTally(t, serverEnv(url), tt.stdin, append([]string{"admin"}, tt.args...)...)
			if res.code != 0 {
				t.Fatalf("exit %d, stderr:\n%s", res.code, res.stderr)
			}
			calls := fake.recorded()
			if len(calls) != 1 {
				t.Fatalf("server got %d calls, want 1", len(calls))
			}
			got := calls[0]
			if got.procedure != tt.procedure {
				t.Errorf("procedure = %s, want %s", got.procedure, tt.procedure)
			}
			if !proto.Equal(got.msg, tt.want) {
				t.Errorf("request =\n%s\nwant\n%s", protojson.Format(got.msg), protojson.Format(tt.want))
			}
			if got.auth != "Bearer tok" {
				t.Errorf("Authorization = %q, want %q", got.auth, "Bearer tok")
			}
		})
	}
}

func TestAdminUpdateSendsOnlySetFields(t *testing.T) {
	// Presence matters on the wire: an update that names only --name must
	// leave every other optional field and list unset, so that the server
	// keeps them.
	fake, url := newFakeAdmin(t)
	res := runTally(t, serverEnv(url), "", "admin", "client", "update", "c-1", "--name", "n")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	req := fake.recorded()[0].msg.(*adminv1.UpdateClientRequest)
	if req.GrantTypes != nil || req.Scopes != nil || req.Audiences != nil || req.RedirectUris != nil ||
		req.AccessTokenTtlSeconds != nil || req.TokenFormat != nil || req.ExpectedRevision != 0 {
		t.Errorf("update sent fields that were not given: %v", req)
	}
	if req.Name == nil || *req.Name != "n" {
		t.Errorf("name = %v, want n", req.Name)
	}
}

func TestAdminJSONOutput(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		check func(t *testing.T, v any)
	}{
		{
			name: "client create has client_id and client_secret at the top level",
			args: []string{"client", "create", "--name", "orders", "--output", "json"},
			check: func(t *testing.T, v any) {
				m := v.(map[string]any)
				if m["client_id"] != fakeClientID || m["client_secret"] != fakeSecret {
					t.Errorf("client_id = %v, client_secret = %v", m["client_id"], m["client_secret"])
				}
				if m["access_token_ttl_seconds"] != float64(600) || m["token_format"] != "jwt" { // a JSON number, not a string
					t.Errorf("snake_case fields missing: %v", m)
				}
				if m["created_at"] != "2025-01-02T03:04:05Z" {
					t.Errorf("created_at = %v, want RFC 3339", m["created_at"])
				}
				if _, ok := m["previous_secret_expires_at"]; !ok {
					t.Errorf("unpopulated fields are not emitted: %v", m)
				}
				if _, ok := m["client"]; ok {
					t.Errorf("client is nested: %v", m)
				}
			},
		},
		{
			name: "public client create has an empty secret",
			args: []string{"client", "create", "--name", "spa", "--public", "--output=json"},
			check: func(t *testing.T, v any) {
				m := v.(map[string]any)
				if s, ok := m["client_secret"]; !ok || s != "" {
					t.Errorf("client_secret = %v (present %v), want empty", s, ok)
				}
			},
		},
		{
			name: "rotate-secret",
			args: []string{"client", "rotate-secret", "c-1", "--output", "json"},
			check: func(t *testing.T, v any) {
				m := v.(map[string]any)
				if m["client_id"] != "c-1" || m["client_secret"] != fakeSecret || m["active_secrets"] != float64(2) {
					t.Errorf("got %v", m)
				}
				if m["previous_secret_expires_at"] != "2025-01-03T03:04:05Z" {
					t.Errorf("previous_secret_expires_at = %v", m["previous_secret_expires_at"])
				}
			},
		},
		{
			name: "tenant get is the tenant object",
			args: []string{"--output", "json", "tenant", "get", "acme"},
			check: func(t *testing.T, v any) {
				m := v.(map[string]any)
				if m["id"] != "acme" || m["display_name"] != "Acme Corp" || m["issuer"] != "https://issuer.example/t/acme" {
					t.Errorf("got %v", m)
				}
			},
		},
		{
			name: "lists are arrays",
			args: []string{"client", "list", "--output", "json"},
			check: func(t *testing.T, v any) {
				a := v.([]any)
				if len(a) != 2 || a[1].(map[string]any)["client_id"] != "c-2" {
					t.Errorf("got %v", a)
				}
			},
		},
		{
			name: "key rotate prints the keys",
			args: []string{"key", "rotate", "--output", "json"},
			check: func(t *testing.T, v any) {
				a := v.([]any)
				if len(a) != 2 || a[0].(map[string]any)["kid"] != "k1" || a[1].(map[string]any)["state"] != "pending" {
					t.Errorf("got %v", a)
				}
			},
		},
		{
			name: "revoke",
			args: []string{"revoke", "--token", "t", "--output", "json"},
			check: func(t *testing.T, v any) {
				m := v.(map[string]any)
				if m["jti"] != "j-1" || m["expires_at"] != "2025-01-02T03:14:05Z" {
					t.Errorf("got %v", m)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, url := newFakeAdmin(t)
			res := runTally(t, serverEnv(url), "", append([]string{"admin"}, tt.args...)...)
			if res.code != 0 {
				t.Fatalf("exit %d: %s", res.code, res.stderr)
			}
			dec := json.NewDecoder(strings.NewReader(res.stdout))
			var v any
			if err := dec.Decode(&v); err != nil {
				t.Fatalf("stdout is not JSON: %v\n%s", err, res.stdout)
			}
			if dec.More() {
				t.Fatalf("stdout holds more than one JSON document:\n%s", res.stdout)
			}
			tt.check(t, v)
		})
	}
}

func TestAdminJSONEmptyList(t *testing.T) {
	fake, url := newFakeAdmin(t)
	fake.tenants = 0
	res := runTally(t, serverEnv(url), "", "admin", "tenant", "list", "--output", "json")
	if res.code != 0 || res.stdout != "[]\n" {
		t.Errorf("exit %d, stdout %q, want [] ", res.code, res.stdout)
	}
}

func TestAdminTextOutput(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{
			name: "tenant get",
			args: []string{"tenant", "get", "acme"},
			want: "id:           acme\n" +
				"display_name: Acme Corp\n" +
				"issuer:       https://issuer.example/t/acme\n" +
				"signing_alg:  ES256\n" +
				"disabled:     false\n" +
				"created_at:   2025-01-02T03:04:05Z\n",
		},
		{
			name: "tenant list",
			args: []string{"tenant", "list"},
			want: "ID       DISPLAY NAME  SIGNING ALG  DISABLED  ISSUER                            CREATED\n" +
				"acme     Acme Corp     ES256        false     https://issuer.example/t/acme     2025-01-02T03:04:05Z\n" +
				"default  Acme Corp     ES256        false     https://issuer.example/t/default  2025-01-02T03:04:05Z\n",
		},
		{
			name: "revocation list",
			args: []string{"revocation", "list"},
			want: "JTI  CLIENT ID  SUBJECT  REVOKED AT            EXPIRES AT            REASON\n" +
				"j-1  c-7f3a     -        2025-01-02T03:04:05Z  2025-01-02T03:14:05Z  leaked\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, url := newFakeAdmin(t)
			res := runTally(t, serverEnv(url), "", append([]string{"admin"}, tt.args...)...)
			if res.code != 0 {
				t.Fatalf("exit %d: %s", res.code, res.stderr)
			}
			if res.stdout != tt.want {
				t.Errorf("stdout =\n%s\nwant\n%s", res.stdout, tt.want)
			}
		})
	}
}

func TestAdminTextClientSecret(t *testing.T) {
	for _, args := range [][]string{
		{"client", "create", "--name", "orders"},
		{"client", "rotate-secret", "c-1"},
	} {
		t.Run(args[1], func(t *testing.T) {
			_, url := newFakeAdmin(t)
			res := runTally(t, serverEnv(url), "", append([]string{"admin"}, args...)...)
			if res.code != 0 {
				t.Fatalf("exit %d: %s", res.code, res.stderr)
			}
			lines := strings.Split(strings.TrimSuffix(res.stdout, "\n"), "\n")
			if len(lines) < 3 {
				t.Fatalf("stdout too short:\n%s", res.stdout)
			}
			if got := strings.Fields(lines[len(lines)-2]); len(got) != 2 || got[0] != "client_secret:" || got[1] != fakeSecret {
				t.Errorf("secret line = %q", lines[len(lines)-2])
			}
			if lines[len(lines)-1] != secretWarning {
				t.Errorf("last line = %q, want the shown-once warning", lines[len(lines)-1])
			}
			if !strings.Contains(res.stdout, "client_id:") {
				t.Errorf("no client_id line:\n%s", res.stdout)
			}
		})
	}
	t.Run("public client has no secret line", func(t *testing.T) {
		_, url := newFakeAdmin(t)
		res := runTally(t, serverEnv(url), "", "admin", "client", "create", "--name", "spa", "--public")
		if res.code != 0 || strings.Contains(res.stdout, "client_secret") || strings.Contains(res.stdout, "warning") {
			t.Errorf("exit %d, stdout:\n%s", res.code, res.stdout)
		}
	})
}

func TestAdminTextEscapesServerValues(t *testing.T) {
	fake, url := newFakeAdmin(t)
	fake.tenantDN = "evil\x1b[2J\nname\t\u202e"
	res := runTally(t, serverEnv(url), "", "admin", "tenant", "get", "acme")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	if !strings.Contains(res.stdout, `display_name: evil\x1b[2J\x0aname\x09\u202e`+"\n") {
		t.Errorf("control characters not escaped:\n%q", res.stdout)
	}
	if strings.Count(res.stdout, "\n") != 6 {
		t.Errorf("want 6 lines, got:\n%q", res.stdout)
	}
}

func TestAdminServerErrors(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"not found", connect.NewError(connect.CodeNotFound, errors.New("client c-1 not found")), "tally admin: not_found: client c-1 not found\n"},
		{"unauthenticated", connect.NewError(connect.CodeUnauthenticated, errors.New("bad admin token")), "tally admin: unauthenticated: bad admin token\n"},
		{"precondition", connect.NewError(connect.CodeFailedPrecondition, errors.New("revision is 4, not 3")), "tally admin: failed_precondition: revision is 4, not 3\n"},
		{"multi-line message", connect.NewError(connect.CodeInvalidArgument, errors.New("bad\nscope")), "tally admin: invalid_argument: bad\\x0ascope\n"},
	}
	for _, tt := range tests {
		for _, output := range []string{"text", "json"} {
			t.Run(tt.name+" "+output, func(t *testing.T) {
				fake, url := newFakeAdmin(t)
				fake.err = tt.err
				res := runTally(t, serverEnv(url), "", "admin", "client", "get", "c-1", "--output", output)
				if res.code != 1 {
					t.Errorf("exit %d, want 1", res.code)
				}
				if res.stderr != tt.want {
					t.Errorf("stderr = %q, want %q", res.stderr, tt.want)
				}
				if res.stdout != "" {
					t.Errorf("stdout = %q, want nothing", res.stdout)
				}
			})
		}
	}
}

func TestAdminUnreachableServer(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	res := runTally(t, serverEnv(url), "", "admin", "tenant", "list")
	if res.code != 1 || !strings.HasPrefix(res.stderr, "tally admin: unavailable: ") {
		t.Errorf("exit %d, stderr %q", res.code, res.stderr)
	}
}

func TestAdminNotAnAdminServer(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(srv.Close)
	res := runTally(t, serverEnv(srv.URL), "", "admin", "tenant", "list")
	if res.code != 1 || !strings.HasPrefix(res.stderr, "tally admin: unimplemented: ") {
		t.Errorf("exit %d, stderr %q", res.code, res.stderr)
	}
}

func TestAdminTimeout(t *testing.T) {
	fake, url := newFakeAdmin(t)
	fake.block = true
	res := runTally(t, serverEnv(url), "", "admin", "tenant", "list", "--timeout", "50ms")
	if res.code != 1 || !strings.HasPrefix(res.stderr, "tally admin: deadline_exceeded: ") {
		t.Errorf("exit %d, stderr %q", res.code, res.stderr)
	}
}

func TestAdminFlagsWinOverEnv(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("  filetok\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()

	tests := []struct {
		name          string
		vars          map[string]string
		before, after []string // flags before and after "tenant list"
		wantAuth      string
	}{
		{"token from env", map[string]string{"TALLY_ADMIN_TOKEN": "envtok"}, nil, nil, "Bearer envtok"},
		{"token flag over env", map[string]string{"TALLY_ADMIN_TOKEN": "envtok"}, nil, []string{"--admin-token", "flagtok"}, "Bearer flagtok"},
		{"global token flag over env", map[string]string{"TALLY_ADMIN_TOKEN": "envtok"}, []string{"--admin-token", "flagtok"}, nil, "Bearer flagtok"},
		{"token file from env, trimmed", map[string]string{"TALLY_ADMIN_TOKEN_FILE": tokenFile}, nil, nil, "Bearer filetok"},
		{"token file flag over token env", map[string]string{"TALLY_ADMIN_TOKEN": "envtok"}, nil, []string{"--admin-token-file", tokenFile}, "Bearer filetok"},
		{"token flag over token file env", map[string]string{"TALLY_ADMIN_TOKEN_FILE": tokenFile}, nil, []string{"--admin-token", "flagtok"}, "Bearer flagtok"},
		{"token env over token file env", map[string]string{"TALLY_ADMIN_TOKEN": "envtok", "TALLY_ADMIN_TOKEN_FILE": tokenFile}, nil, nil, "Bearer envtok"},
		{"command flag over global flag", nil, []string{"--admin-token", "earlier"}, []string{"--admin-token", "later"}, "Bearer later"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake, url := newFakeAdmin(t)
			// The server comes from the flag; the environment names a dead one.
			vars := map[string]string{"TALLY_SERVER": deadURL}
			for k, v := range tt.vars {
				vars[k] = v
			}
			args := append([]string{"admin", "--server", url}, tt.before...)
			args = append(append(args, "tenant", "list"), tt.after...)
			res := runTally(t, vars, "", args...)
			if res.code != 0 {
				t.Fatalf("exit %d: %s", res.code, res.stderr)
			}
			calls := fake.recorded()
			if len(calls) != 1 || calls[0].auth != tt.wantAuth {
				t.Errorf("calls %v, want one with Authorization %q", calls, tt.wantAuth)
			}
		})
	}
}

func TestAdminDefaultTokenFile(t *testing.T) {
	fake, url := newFakeAdmin(t)
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data", "admin-token"), []byte("devtok\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	res := runTally(t, map[string]string{"TALLY_SERVER": url}, "", "admin", "tenant", "list")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	if calls := fake.recorded(); len(calls) != 1 || calls[0].auth != "Bearer devtok" {
		t.Errorf("calls %v", calls)
	}
}

func TestAdminUsageErrors(t *testing.T) {
	tokenDir := t.TempDir()
	emptyToken := filepath.Join(tokenDir, "empty")
	if err := os.WriteFile(emptyToken, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir()) // no ./data/admin-token here

	tests := []struct {
		name   string
		noEnv  bool // run without TALLY_ADMIN_TOKEN
		stdin  string
		args   []string
		stderr string // substring of stderr
	}{
		{name: "missing token", noEnv: true, args: []string{"tenant", "list"}, stderr: "no admin token"},
		{name: "empty token file", noEnv: true, args: []string{"tenant", "list", "--admin-token-file", emptyToken}, stderr: "the admin token is empty"},
		{name: "missing token file", noEnv: true, args: []string{"tenant", "list", "--admin-token-file", filepath.Join(tokenDir, "nope")}, stderr: "admin token:"},
		{name: "both token flags", args: []string{"tenant", "list", "--admin-token", "a", "--admin-token-file", emptyToken}, stderr: "not both"},
		{name: "token with a space", args: []string{"tenant", "list", "--admin-token", "a b"}, stderr: "RFC 6750"},
		{name: "bad output", args: []string{"tenant", "list", "--output", "yaml"}, stderr: "--output must be text or json"},
		{name: "bad timeout", args: []string{"tenant", "list", "--timeout", "0s"}, stderr: "--timeout must be positive"},
		{name: "bad server", args: []string{"tenant", "list", "--server", "127.0.0.1:8080"}, stderr: "--server must be an http"},
		{name: "unknown flag", args: []string{"tenant", "list", "--bogus"}, stderr: "flag provided but not defined: -bogus"},
		{name: "bad duration", args: []string{"client", "create", "--name", "x", "--ttl", "ten"}, stderr: "invalid value"},
		{name: "unexpected argument", args: []string{"tenant", "list", "extra"}, stderr: `unexpected argument "extra"`},
		{name: "tenant create without name", args: []string{"tenant", "create"}, stderr: "--name is required"},
		{name: "tenant create bad alg", args: []string{"tenant", "create", "--name", "a", "--signing-alg", "HS256"}, stderr: "--signing-alg must be one of ES256, EdDSA, RS256"},
		{name: "tenant get without id", args: []string{"tenant", "get"}, stderr: "missing tenant ID"},
		{name: "tenant get two ids", args: []string{"tenant", "get", "a", "b"}, stderr: `unexpected argument "b"`},
		{name: "client create without name", args: []string{"client", "create", "--scope", "a"}, stderr: "--name is required"},
		{name: "client create empty tenant", args: []string{"client", "create", "--name", "a", "--tenant", ""}, stderr: "--tenant is required"},
		{name: "client create fractional ttl", args: []string{"client", "create", "--name", "a", "--ttl", "1500ms"}, stderr: "--ttl must be a whole number of seconds"},
		{name: "client create negative ttl", args: []string{"client", "create", "--name", "a", "--ttl", "-1m"}, stderr: "--ttl must not be negative"},
		{name: "client create bad format", args: []string{"client", "create", "--name", "a", "--format", "paseto"}, stderr: "--format must be one of jwt, opaque"},
		{name: "client get without id", args: []string{"client", "get", "--tenant", "acme"}, stderr: "missing CLIENT_ID"},
		{name: "client update nothing", args: []string{"client", "update", "c-1"}, stderr: "nothing to update"},
		{name: "client update only revision", args: []string{"client", "update", "c-1", "--expected-revision", "3"}, stderr: "nothing to update"},
		{name: "client update empty name", args: []string{"client", "update", "c-1", "--name", ""}, stderr: "--name must not be empty"},
		{name: "client update bad format", args: []string{"client", "update", "c-1", "--format", ""}, stderr: "--format must be one of"},
		{name: "rotate-secret fractional overlap", args: []string{"client", "rotate-secret", "c-1", "--overlap", "1.5s"}, stderr: "--overlap must be a whole number of seconds"},
		{name: "key rotate bad alg", args: []string{"key", "rotate", "--alg", "none"}, stderr: "--alg must be one of"},
		{name: "key rotate negative delay", args: []string{"key", "rotate", "--publish-delay", "-5m"}, stderr: "--publish-delay must not be negative"},
		{name: "revoke nothing", args: []string{"revoke"}, stderr: "give exactly one of --token, --token-stdin or --jti"},
		{name: "revoke two ways", args: []string{"revoke", "--token", "t", "--jti", "j", "--expires-at", "2030-01-01T00:00:00Z"}, stderr: "give exactly one of"},
		{name: "revoke jti without expiry", args: []string{"revoke", "--jti", "j"}, stderr: "--jti needs --expires-at"},
		{name: "revoke expiry without jti", args: []string{"revoke", "--token", "t", "--expires-at", "2030-01-01T00:00:00Z"}, stderr: "--expires-at goes with --jti"},
		{name: "revoke bad expiry", args: []string{"revoke", "--jti", "j", "--expires-at", "tomorrow"}, stderr: "--expires-at must be an RFC 3339 time"},
		{name: "revoke empty token", args: []string{"revoke", "--token", " "}, stderr: "--token is empty"},
		{name: "revoke empty stdin", args: []string{"revoke", "--token-stdin"}, stderr: "no token on stdin"},
		{name: "revoke two tokens on stdin", stdin: "a\nb\n", args: []string{"revoke", "--token-stdin"}, stderr: "exactly one token"},
		{name: "unknown command", args: []string{"bogus"}, stderr: `unknown command "bogus"`},
		{name: "unknown subcommand", args: []string{"client", "bogus"}, stderr: `unknown command "bogus"`},
		{name: "group without subcommand", args: []string{"key"}, stderr: "tally admin key <command>"},
		{name: "no command", args: nil, stderr: "tally admin [global flags] <command>"},
		{name: "unknown global flag", args: []string{"--bogus", "tenant", "list"}, stderr: "flag provided but not defined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake, url := newFakeAdmin(t)
			vars := serverEnv(url)
			if tt.noEnv {
				delete(vars, "TALLY_ADMIN_TOKEN")
			}
			res := runTally(t, vars, tt.stdin, append([]string{"admin"}, tt.args...)...)
			if res.code != 2 {
				t.Errorf("exit %d, want 2; stderr:\n%s", res.code, res.stderr)
			}
			if !strings.Contains(res.stderr, tt.stderr) {
				t.Errorf("stderr does not say %q:\n%s", tt.stderr, res.stderr)
			}
			if res.stdout != "" {
				t.Errorf("stdout = %q, want nothing", res.stdout)
			}
			if n := len(fake.recorded()); n != 0 {
				t.Errorf("a usage error reached the server (%d calls)", n)
			}
		})
	}
}

func TestAdminHelp(t *testing.T) {
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"-h"}, []string{"tally admin [global flags] <command>", "Examples:", "./data/admin-token", "TALLY_SERVER", "Exit status"}},
		{[]string{"--help"}, []string{"Commands:"}},
		{[]string{"help"}, []string{"Commands:"}},
		{[]string{"client", "-h"}, []string{"tally admin client <command>", "rotate-secret", "Examples:"}},
		{[]string{"client", "create", "-h"}, []string{"tally admin client create", "-scope", "-redirect-uri", "Global flags:", "-admin-token-file", "Examples:", `--scope "read:orders write:orders"`}},
		{[]string{"tenant", "get", "--help"}, []string{"tally admin tenant get ID", "before or after the positional argument"}},
		{[]string{"revoke", "-h"}, []string{"--token-stdin", "Examples:"}},
		{[]string{"key", "rotate", "-h"}, []string{"-publish-delay", "0s"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			fake, url := newFakeAdmin(t)
			res := runTally(t, serverEnv(url), "", append([]string{"admin"}, tt.args...)...)
			if res.code != 0 {
				t.Errorf("exit %d, want 0; stderr:\n%s", res.code, res.stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(res.stdout, w) {
					t.Errorf("help does not mention %q:\n%s", w, res.stdout)
				}
			}
			if len(fake.recorded()) != 0 {
				t.Error("help called the server")
			}
		})
	}
}

func TestListFlag(t *testing.T) {
	tests := []struct {
		split bool
		sets  []string
		want  []string
	}{
		{true, []string{"a b", "  c\td ", "a"}, []string{"a", "b", "c", "d"}},
		{true, []string{""}, nil},
		{false, []string{"https://x/cb", " https://y/cb ", "https://x/cb"}, []string{"https://x/cb", "https://y/cb"}},
		{false, []string{""}, nil},
	}
	for _, tt := range tests {
		l := &listFlag{split: tt.split}
		for _, s := range tt.sets {
			if err := l.Set(s); err != nil {
				t.Fatal(err)
			}
		}
		if strings.Join(l.values, ",") != strings.Join(tt.want, ",") || len(l.values) != len(tt.want) {
			t.Errorf("Set(%q) split=%v: %q, want %q", tt.sets, tt.split, l.values, tt.want)
		}
	}
}

func TestWithClientSecret(t *testing.T) {
	tests := []struct{ in, want string }{
		{`{}`, `{"client_secret":"s"}`},
		{`{"a":1}`, `{"a":1,"client_secret":"s"}`},
	}
	for _, tt := range tests {
		got, err := withClientSecret([]byte(tt.in), "s")
		if err != nil || string(got) != tt.want {
			t.Errorf("withClientSecret(%s) = %s, %v; want %s", tt.in, got, err, tt.want)
		}
	}
	if _, err := withClientSecret([]byte(`[]`), "s"); err == nil {
		t.Error("withClientSecret accepted an array")
	}
}

// FuzzTextValue checks that server-provided text can never put a control
// character or invalid UTF-8 on the terminal.
func FuzzTextValue(f *testing.F) {
	for _, s := range []string{"", "plain", "a\tb\nc", "\x1b[31mred", "\u202eevil", "\xff\xfe", "caf\u00e9 \u0085"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := textValue(s)
		if !utf8.ValidString(out) {
			t.Fatalf("textValue(%q) = %q is not UTF-8", s, out)
		}
		for _, r := range out {
			if unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r) {
				t.Fatalf("textValue(%q) = %q holds %U", s, out, r)
			}
		}
		if s != "" && out == "" {
			t.Fatalf("textValue(%q) is empty", s)
		}
	})
}

// FuzzAdminArgs runs arbitrary argument lists (one per line) against the
// fake server: the CLI must never panic, must exit 0, 1 or 2, and a usage
// error must never reach the server.
func FuzzAdminArgs(f *testing.F) {
	for _, s := range []string{
		"tenant\nlist",
		"client\ncreate\n--name\nx\n--scope\na b\n--ttl\n10m",
		"client\nupdate\nc-1\n--audience=\n--expected-revision\n3",
		"client\nupdate\n--\n--ttl",
		"revoke\n--jti\nj\n--expires-at\n2030-01-01T00:00:00Z",
		"revoke\n--token-stdin",
		"key\nrotate\n--publish-delay\n-1ns",
		"--output\njson\nclient\nrotate-secret\nc-1\n--overlap\n0s",
		"client\n-h",
		"\x00\n--\n-",
	} {
		f.Add(s, "stdin-token")
	}
	f.Fuzz(func(t *testing.T, argv, stdin string) {
		if strings.Contains(argv, "server") || strings.Contains(argv, "token-file") {
			t.Skip("the fuzzer must not point the CLI elsewhere or read files")
		}
		fake, url := newFakeAdmin(t)
		args := append([]string{"admin"}, strings.Split(argv, "\n")...)
		res := runTally(t, serverEnv(url), stdin, args...)
		switch res.code {
		case 0, 1:
		case 2:
			if n := len(fake.recorded()); n != 0 {
				t.Fatalf("usage error after %d calls: %q", n, res.stderr)
			}
		default:
			t.Fatalf("exit %d", res.code)
		}
	})
}

// TestSecondsFlag: duration flags of the admin CLI take Go durations or
// plain seconds.
func TestSecondsFlag(t *testing.T) {
	for in, want := range map[string]time.Duration{"600": 10 * time.Minute, "10m": 10 * time.Minute, "90s": 90 * time.Second, "0": 0} {
		var d seconds
		if err := d.Set(in); err != nil || time.Duration(d) != want {
			t.Errorf("Set(%q) = %v, %v; want %v", in, time.Duration(d), err, want)
		}
	}
	for _, in := range []string{"", "ten", "-5", "99999999999999999999"} {
		var d seconds
		if err := d.Set(in); err == nil {
			t.Errorf("Set(%q) accepted", in)
		}
	}
}

// TestAdminHelpListsEveryCommand: "tally admin -h" names every command.
func TestAdminHelpListsEveryCommand(t *testing.T) {
	help := adminHelp()
	for _, c := range adminCommands() {
		if !strings.Contains(help, "  "+c.path+" ") {
			t.Errorf("tally admin -h does not list %q", c.path)
		}
	}
}
