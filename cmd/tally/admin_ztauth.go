package main

import (
	"context"
	"flag"
	"os"
	"slices"
	"strconv"
	"strings"

	"connectrpc.com/connect"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
)

// Issue 11: client authentication methods on "client create" and the
// "trust" commands (a tenant's client-certificate CA and its workload
// identity federations).

// clientAuthMethods are RFC 7591's token_endpoint_auth_method names tally
// accepts.
var clientAuthMethods = []string{"client_secret_basic", "client_secret_post", "private_key_jwt", "tls_client_auth", "self_signed_tls_client_auth"}

// clientAuthFlagSet are the client create flags of issue 11.
type clientAuthFlagSet struct {
	methods   *listFlag
	jwksFile  *string
	jwksURI   *string
	subjectDN *string
	sanDNS    *string
	sanURI    *string
}

func clientAuthFlags(fs *flag.FlagSet) *clientAuthFlagSet {
	f := &clientAuthFlagSet{methods: &listFlag{}}
	fs.Var(f.methods, "auth-method", "token endpoint auth `method`, repeatable: client_secret_basic (default), client_secret_post, private_key_jwt, tls_client_auth, self_signed_tls_client_auth")
	f.jwksFile = fs.String("jwks-file", "", "`file` holding a JWKS of the client's public keys (private_key_jwt, self_signed_tls_client_auth)")
	f.jwksURI = fs.String("jwks-uri", "", "`URL` of the client's JWKS (private_key_jwt)")
	f.subjectDN = fs.String("tls-subject-dn", "", "certificate subject `DN` for tls_client_auth, e.g. \"CN=billing,O=Example\"")
	f.sanDNS = fs.String("tls-san-dns", "", "certificate DNS SAN `name` for tls_client_auth")
	f.sanURI = fs.String("tls-san-uri", "", "certificate URI SAN for tls_client_auth (e.g. a SPIFFE ID)")
	return f
}

// build returns the request's auth settings, nil when no flag was given.
func (f *clientAuthFlagSet) build(s *adminSession, public bool) (*adminv1.ClientAuth, error) {
	for _, m := range f.methods.values {
		if !slices.Contains(clientAuthMethods, m) {
			return nil, usagef("--auth-method %q: want one of %s", m, strings.Join(clientAuthMethods, ", "))
		}
	}
	a := &adminv1.ClientAuth{Methods: f.methods.values, JwksUri: *f.jwksURI, TlsSubjectDn: *f.subjectDN, TlsSanDns: *f.sanDNS, TlsSanUri: *f.sanURI}
	if *f.jwksFile != "" {
		b, err := readAdminFile(s, *f.jwksFile)
		if err != nil {
			return nil, err
		}
		a.Jwks = string(b)
	}
	has := func(m string) bool { return slices.Contains(a.Methods, m) }
	switch {
	case len(a.Methods) == 0 && a.Jwks == "" && a.JwksUri == "" && a.TlsSubjectDn == "" && a.TlsSanDns == "" && a.TlsSanUri == "":
		return nil, nil
	case public:
		return nil, usagef("a --public client takes no --auth-method")
	case has("private_key_jwt") && a.Jwks == "" && a.JwksUri == "":
		return nil, usagef("--auth-method private_key_jwt needs --jwks-file or --jwks-uri")
	case has("self_signed_tls_client_auth") && a.Jwks == "":
		return nil, usagef("--auth-method self_signed_tls_client_auth needs --jwks-file")
	case has("tls_client_auth") && a.TlsSubjectDn == "" && a.TlsSanDns == "" && a.TlsSanUri == "":
		return nil, usagef("--auth-method tls_client_auth needs --tls-subject-dn, --tls-san-dns or --tls-san-uri")
	}
	return a, nil
}

// readAdminFile reads a file argument ("-" is stdin).
func readAdminFile(s *adminSession, name string) ([]byte, error) {
	if name == "-" {
		var sb strings.Builder
		buf := make([]byte, 32<<10)
		for {
			n, err := s.stdin().Read(buf)
			sb.Write(buf[:n])
			if err != nil || sb.Len() > 1<<20 {
				break
			}
		}
		return []byte(sb.String()), nil
	}
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, usagef("%v", err)
	}
	return b, nil
}

func trustFields(t *adminv1.TenantTrust) []field {
	var feds []string
	for _, f := range t.GetFederations() {
		var subs []string
		for _, m := range f.GetSubjects() {
			subs = append(subs, m.GetSubject()+"="+m.GetClientId())
		}
		keys := "discovery"
		switch {
		case f.GetJwks() != "":
			keys = "inline JWKS"
		case f.GetJwksUri() != "":
			keys = f.GetJwksUri()
		}
		feds = append(feds, f.GetName()+" "+f.GetIssuer()+" ("+keys+") "+strings.Join(subs, " "))
	}
	ca := "none"
	if t.GetClientCaPem() != "" {
		ca = "set (" + strconv.Itoa(strings.Count(t.GetClientCaPem(), "BEGIN CERTIFICATE")) + " certificates)"
	}
	return []field{{"client_ca", ca}, {"federations", strings.Join(feds, "; ")}, {"updated_at", textTime(t.GetUpdatedAt())}}
}

// updateTrust reads the tenant's trust, lets change edit it and writes it.
func updateTrust(ctx context.Context, s *adminSession, tenant string, change func(*adminv1.TenantTrust) error) error {
	api, err := s.client()
	if err != nil {
		return err
	}
	cur, err := api.GetTenantTrust(ctx, connect.NewRequest(&adminv1.GetTenantTrustRequest{Tenant: tenant}))
	if err != nil {
		return err
	}
	t := cur.Msg.GetTrust()
	if t == nil {
		t = &adminv1.TenantTrust{}
	}
	if err := change(t); err != nil {
		return err
	}
	res, err := api.SetTenantTrust(ctx, connect.NewRequest(&adminv1.SetTenantTrustRequest{Tenant: tenant, Trust: t}))
	if err != nil {
		return err
	}
	return s.printOne(res.Msg.GetTrust(), trustFields(res.Msg.GetTrust()))
}

func trustCommands() []adminCommand {
	return []adminCommand{
		{
			path:     "trust get",
			synopsis: "[--tenant T]",
			summary:  "Show a tenant's client-certificate CA and workload identity federations.",
			examples: []string{`tally admin trust get --tenant acme --output json`},
			setup:    trustGet,
		},
		{
			path:     "trust ca-set",
			synopsis: "[--tenant T] --ca-file FILE",
			summary:  "Set the CA certificates (PEM) tls_client_auth client certificates must chain to.",
			detail:   "An empty file removes the CA: tls_client_auth then fails for every client of the tenant.",
			examples: []string{`tally admin trust ca-set --tenant acme --ca-file mesh-ca.pem`},
			setup:    trustCASet,
		},
		{
			path:     "trust federation-add",
			synopsis: "[--tenant T] --name N --issuer URL [--jwks-file F | --jwks-uri U] [--audience A] --subject SUB=CLIENT_ID...",
			summary:  "Trust an external token issuer (workload identity federation) and map its subjects to clients.",
			detail: "Without --jwks-file or --jwks-uri the keys come from the issuer's\n" +
				"/.well-known/openid-configuration. A workload then authenticates as the mapped\n" +
				"client by sending its platform token as client_assertion (RFC 7523). Adding a\n" +
				"federation with an existing name replaces it.",
			examples: []string{
				`tally admin trust federation-add --tenant acme --name k8s-prod --issuer https://oidc.eks.example/id/ABC --audience https://tally.example/t/acme --subject system:serviceaccount:payments:billing=3f9c2a7e`,
			},
			setup: trustFederationAdd,
		},
		{
			path:     "trust federation-remove",
			synopsis: "[--tenant T] --name N",
			summary:  "Stop trusting a federated issuer.",
			examples: []string{`tally admin trust federation-remove --tenant acme --name k8s-prod`},
			setup:    trustFederationRemove,
		},
	}
}

// trustGet is "tally admin trust get": show a tenant's client-certificate CA and workload identity federations.
func trustGet(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	return func(ctx context.Context, s *adminSession, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.GetTenantTrust(ctx, connect.NewRequest(&adminv1.GetTenantTrustRequest{Tenant: *tenant}))
		if err != nil {
			return err
		}
		return s.printOne(res.Msg.GetTrust(), trustFields(res.Msg.GetTrust()))
	}
}

// trustCASet is "tally admin trust ca-set": set the CA certificates (PEM) tls_client_auth client certificates must chain to.
func trustCASet(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	file := fs.String("ca-file", "", "PEM `file` of CA certificates (required)")
	return func(ctx context.Context, s *adminSession, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if err := requireFlag("ca-file", *file); err != nil {
			return err
		}
		b, err := readAdminFile(s, *file)
		if err != nil {
			return err
		}
		return updateTrust(ctx, s, *tenant, func(t *adminv1.TenantTrust) error {
			t.ClientCaPem = string(b)
			return nil
		})
	}
}

// trustFederationAdd is "tally admin trust federation-add": trust an external token issuer (workload identity federation) and map its subjects to clients.
func trustFederationAdd(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	name := fs.String("name", "", "federation `name` (required)")
	issuer := fs.String("issuer", "", "external issuer `URL`, exactly the tokens' iss (required)")
	jwksFile := fs.String("jwks-file", "", "`file` holding the issuer's JWKS")
	jwksURI := fs.String("jwks-uri", "", "`URL` of the issuer's JWKS")
	aud := fs.String("audience", "", "required `aud` of the tokens (default: the tenant's issuer or token endpoint)")
	subjects := &listFlag{}
	fs.Var(subjects, "subject", "`SUB=CLIENT_ID` mapping, repeatable (required)")
	return func(ctx context.Context, s *adminSession, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		for _, f := range []struct{ n, v string }{{"name", *name}, {"issuer", *issuer}} {
			if err := requireFlag(f.n, f.v); err != nil {
				return err
			}
		}
		if len(subjects.values) == 0 {
			return usagef("--subject is required")
		}
		fed := &adminv1.FederationTrust{Name: *name, Issuer: *issuer, JwksUri: *jwksURI, Audience: *aud}
		for _, m := range subjects.values {
			i := strings.LastIndex(m, "=")
			if i <= 0 || i == len(m)-1 {
				return usagef("--subject %q: want SUB=CLIENT_ID", m)
			}
			fed.Subjects = append(fed.Subjects, &adminv1.SubjectMapping{Subject: m[:i], ClientId: m[i+1:]})
		}
		if *jwksFile != "" {
			b, err := readAdminFile(s, *jwksFile)
			if err != nil {
				return err
			}
			fed.Jwks = string(b)
		}
		return updateTrust(ctx, s, *tenant, func(t *adminv1.TenantTrust) error {
			t.Federations = slices.DeleteFunc(t.Federations, func(f *adminv1.FederationTrust) bool { return f.GetName() == *name })
			t.Federations = append(t.Federations, fed)
			return nil
		})
	}
}

// trustFederationRemove is "tally admin trust federation-remove": stop trusting a federated issuer.
func trustFederationRemove(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	name := fs.String("name", "", "federation `name` (required)")
	return func(ctx context.Context, s *adminSession, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if err := requireFlag("name", *name); err != nil {
			return err
		}
		return updateTrust(ctx, s, *tenant, func(t *adminv1.TenantTrust) error {
			n := len(t.Federations)
			t.Federations = slices.DeleteFunc(t.Federations, func(f *adminv1.FederationTrust) bool { return f.GetName() == *name })
			if len(t.Federations) == n {
				return usagef("no federation named %q", *name)
			}
			return nil
		})
	}
}
