package node_test

import (
	"context"
	"testing"

	"connectrpc.com/connect"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
)

// TestClientSubjectDNValidated: a tls_client_auth subject DN that is not an
// RFC 4514 name (it could never match) is refused at registration.
func TestClientSubjectDNValidated(t *testing.T) {
	n := nodetest.Start(t)
	ctx := context.Background()
	for _, dn := range []string{`CN=a\q`, "XX=billing", "CN"} {
		_, err := n.Admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{Tenant: "default", Name: "pki",
			Auth: &adminv1.ClientAuth{Methods: []string{"tls_client_auth"}, TlsSubjectDn: dn}}))
		if connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("%q: %v, want InvalidArgument", dn, err)
		}
	}
	if _, err := n.Admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{Tenant: "default", Name: "pki",
		Auth: &adminv1.ClientAuth{Methods: []string{"tls_client_auth"}, TlsSubjectDn: `CN=billing\, EU+UID=7,O=Example`}})); err != nil {
		t.Errorf("valid DN: %v", err)
	}
}
