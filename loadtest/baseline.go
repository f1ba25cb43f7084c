package loadtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
)

// Signing algorithms the baseline can use (RFC 7518 section 3.4, RFC 8037).
const (
	AlgES256 = "ES256"
	AlgEdDSA = "EdDSA"
)

// DefaultMaxBodyBytes bounds a token request body. It matches the default
// limit of tally's token endpoint, so that both endpoints read the same.
const DefaultMaxBodyBytes = 16 << 10

// Paths the baseline serves below its issuer URL.
const (
	baselineTokenPath = "/oauth2/token"
	baselineJWKSPath  = "/jwks.json"
	wellKnownOAuth    = "/.well-known/oauth-authorization-server"
	wellKnownOIDC     = "/.well-known/openid-configuration"
)

// BaselineConfig configures the bare token endpoint served by NewBaseline.
type BaselineConfig struct {
	// Issuer is the iss claim and the base of the served URLs: the token
	// endpoint is Issuer+"/oauth2/token", as in tally. An absolute http or
	// https URL without query or fragment.
	Issuer string
	// Audience is the aud claim. Empty means the issuer.
	Audience []string
	// ClientID and ClientSecret are the one client accepted, authenticated
	// with HTTP Basic (RFC 6749 section 2.3.1).
	ClientID     string
	ClientSecret string
	// Scopes the client may request; a request without scope is granted all
	// of them (RFC 6749 section 3.3).
	Scopes []string
	// Alg is AlgES256 or AlgEdDSA, and Key a private key of that kind
	// (*ecdsa.PrivateKey on P-256, or ed25519.PrivateKey); see
	// NewSigningKey.
	Alg string
	Key crypto.Signer
	// KeyID is the kid header. Empty means the key's RFC 7638 thumbprint.
	KeyID string
	// TTL is the access token lifetime (exp - iat, and expires_in).
	TTL time.Duration
	// MaxBodyBytes bounds the request body.
	MaxBodyBytes int64
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Rand is the source of token ids; nil means crypto/rand.Reader.
	Rand io.Reader
}

// DefaultBaselineConfig returns a configuration with the defaults filled in.
// Issuer, ClientID, ClientSecret and Key must still be set.
func DefaultBaselineConfig() BaselineConfig {
	return BaselineConfig{
		Alg:          AlgES256,
		TTL:          5 * time.Minute,
		MaxBodyBytes: DefaultMaxBodyBytes,
		Now:          time.Now,
		Rand:         rand.Reader,
	}
}

// Validate reports the first problem with c, or nil.
func (c BaselineConfig) Validate() error {
	if err := validateIssuer(c.Issuer); err != nil {
		return err
	}
	if c.ClientID == "" || c.ClientSecret == "" {
		return errors.New("loadtest: baseline needs a client id and secret")
	}
	for _, s := range c.Scopes {
		if !validScopeToken(s) {
			return fmt.Errorf("loadtest: invalid scope %q", s)
		}
	}
	if err := checkKey(c.Alg, c.Key); err != nil {
		return err
	}
	if c.TTL < time.Second {
		return fmt.Errorf("loadtest: token ttl %v is under a second", c.TTL)
	}
	if c.MaxBodyBytes <= 0 {
		return errors.New("loadtest: max body bytes must be positive")
	}
	return nil
}

func validateIssuer(issuer string) error {
	u, err := url.Parse(issuer)
	if err != nil {
		return fmt.Errorf("loadtest: issuer: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("loadtest: issuer %q is not an http(s) URL without query or fragment", issuer)
	}
	return nil
}

func checkKey(alg string, key crypto.Signer) error {
	if key == nil {
		return errors.New("loadtest: baseline needs a signing key")
	}
	switch alg {
	case AlgES256:
		k, ok := key.(*ecdsa.PrivateKey)
		if !ok || k.Curve != elliptic.P256() {
			return errors.New("loadtest: ES256 needs a P-256 *ecdsa.PrivateKey")
		}
	case AlgEdDSA:
		if _, ok := key.Public().(ed25519.PublicKey); !ok {
			return errors.New("loadtest: EdDSA needs an Ed25519 key")
		}
	default:
		return fmt.Errorf("loadtest: unsupported signing alg %q (want %s or %s)", alg, AlgES256, AlgEdDSA)
	}
	return nil
}

// NewSigningKey generates a fresh private key for alg (AlgES256 or AlgEdDSA).
func NewSigningKey(alg string) (crypto.Signer, error) {
	switch alg {
	case AlgES256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case AlgEdDSA:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	default:
		return nil, fmt.Errorf("loadtest: unsupported signing alg %q (want %s or %s)", alg, AlgES256, AlgEdDSA)
	}
}

// NewBaseline returns the bare token endpoint: the least work any Go token
// endpoint must do to issue an RFC 9068 JWT access token for the
// client_credentials grant (RFC 6749 section 4.4), with no tenancy, state
// lookups, logging or metrics.
//
// Below the issuer's path it serves POST /oauth2/token, the RFC 8414
// metadata document (at /.well-known/oauth-authorization-server inserted
// before the path, and at /.well-known/openid-configuration after it) and
// /jwks.json with the public key. Bad requests get RFC 6749 section 5.2 errors; the handler
// never panics on input. It is safe for concurrent use.
func NewBaseline(cfg BaselineConfig) (http.Handler, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	issuer := cfg.Issuer
	base := strings.TrimSuffix(issuer, "/")
	u, _ := url.Parse(base) // validated above
	b := &baseline{
		cfg:      cfg,
		issuer:   issuer,
		id:       []byte(cfg.ClientID),
		secret:   []byte(cfg.ClientSecret),
		allowed:  make(map[string]bool, len(cfg.Scopes)),
		defScope: strings.Join(cfg.Scopes, " "),
		ttl:      int64(cfg.TTL / time.Second),
	}
	for _, s := range cfg.Scopes {
		b.allowed[s] = true
	}
	// RFC 7519 section 4.1.3: a single audience is a string.
	switch len(cfg.Audience) {
	case 0:
		b.aud = issuer
	case 1:
		b.aud = cfg.Audience[0]
	default:
		b.aud = append([]string(nil), cfg.Audience...)
	}
	if cfg.Alg == AlgES256 {
		b.method = jwt.SigningMethodES256
	} else {
		b.method = jwt.SigningMethodEdDSA
	}
	jwk := jose.JSONWebKey{Key: cfg.Key.Public(), Algorithm: cfg.Alg, Use: "sig"}
	b.kid = cfg.KeyID
	if b.kid == "" {
		tp, err := jwk.Thumbprint(crypto.SHA256)
		if err != nil {
			return nil, fmt.Errorf("loadtest: key thumbprint: %w", err)
		}
		b.kid = base64.RawURLEncoding.EncodeToString(tp)
	}
	jwk.KeyID = b.kid
	var err error
	if b.jwks, err = json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{jwk}}); err != nil {
		return nil, fmt.Errorf("loadtest: jwks: %w", err)
	}
	// RFC 8414 section 2.
	b.metadata, err = json.Marshal(Metadata{
		Issuer:                            issuer,
		TokenEndpoint:                     base + baselineTokenPath,
		JWKSURI:                           base + baselineJWKSPath,
		GrantTypesSupported:               []string{"client_credentials"},
		TokenEndpointAuthMethodsSupported: []string{"client_secret_basic"},
		ScopesSupported:                   cfg.Scopes,
		ResponseTypesSupported:            []string{},
	})
	if err != nil {
		return nil, fmt.Errorf("loadtest: metadata: %w", err)
	}
	b.tokenPath = u.Path + baselineTokenPath
	b.jwksPath = u.Path + baselineJWKSPath
	b.oauthMetaPath = wellKnownOAuth + u.Path // RFC 8414 section 3.1
	b.oidcMetaPath = u.Path + wellKnownOIDC
	return b, nil
}

type baseline struct {
	cfg      BaselineConfig
	issuer   string
	aud      any // string or []string
	method   jwt.SigningMethod
	kid      string
	id       []byte
	secret   []byte
	allowed  map[string]bool
	defScope string
	ttl      int64

	metadata, jwks              []byte
	tokenPath, jwksPath         string
	oauthMetaPath, oidcMetaPath string
}

// accessTokenClaims is the RFC 9068 section 2.2 claim set tally issues for
// the client_credentials grant, where the subject is the client itself.
// Times are whole seconds.
type accessTokenClaims struct {
	Issuer    string `json:"iss"`
	Subject   string `json:"sub"`
	Audience  any    `json:"aud"`
	ExpiresAt int64  `json:"exp"`
	IssuedAt  int64  `json:"iat"`
	ID        string `json:"jti"`
	ClientID  string `json:"client_id"`
	Scope     string `json:"scope,omitempty"`
}

// The jwt.Claims methods; the signer does not call them, a parser would.
func (c *accessTokenClaims) GetExpirationTime() (*jwt.NumericDate, error) {
	return jwt.NewNumericDate(time.Unix(c.ExpiresAt, 0)), nil
}
func (c *accessTokenClaims) GetIssuedAt() (*jwt.NumericDate, error) {
	return jwt.NewNumericDate(time.Unix(c.IssuedAt, 0)), nil
}
func (c *accessTokenClaims) GetNotBefore() (*jwt.NumericDate, error) { return nil, nil }
func (c *accessTokenClaims) GetIssuer() (string, error)              { return c.Issuer, nil }
func (c *accessTokenClaims) GetSubject() (string, error)             { return c.Subject, nil }
func (c *accessTokenClaims) GetAudience() (jwt.ClaimStrings, error) {
	switch a := c.Audience.(type) {
	case string:
		return jwt.ClaimStrings{a}, nil
	case []string:
		return jwt.ClaimStrings(a), nil
	}
	return nil, nil
}

// tokenResponse is the RFC 6749 section 5.1 success body.
type tokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	Scope       string `json:"scope,omitempty"`
}

// errorResponse is the RFC 6749 section 5.2 error body.
type errorResponse struct {
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description,omitempty"`
}

func (b *baseline) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case b.tokenPath:
		b.token(w, r)
	case b.oauthMetaPath, b.oidcMetaPath:
		serveJSONDocument(w, r, b.metadata)
	case b.jwksPath:
		serveJSONDocument(w, r, b.jwks)
	default:
		http.NotFound(w, r)
	}
}

func serveJSONDocument(w http.ResponseWriter, r *http.Request, doc []byte) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(doc)
}

// token implements the token endpoint (RFC 6749 section 3.2) for the
// client_credentials grant (section 4.4).
func (b *baseline) token(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeOAuthError(w, http.StatusMethodNotAllowed, "invalid_request", "the token endpoint accepts only POST")
		return
	}
	form, terr := b.readTokenForm(w, r)
	if terr != nil {
		terr.write(w)
		return
	}
	id, terr := b.authenticate(r, form)
	if terr != nil {
		terr.write(w)
		return
	}
	scope, terr := b.checkGrant(form)
	if terr != nil {
		terr.write(w)
		return
	}
	b.issue(w, id, scope)
}

// tokenError is an error answer of the token endpoint: invalid_client
// (writeInvalidClient) or an OAuth error with its status.
type tokenError struct {
	invalidClient bool
	status        int
	code, desc    string
}

func badRequest(code, desc string) *tokenError {
	return &tokenError{status: http.StatusBadRequest, code: code, desc: desc}
}

var errInvalidClient = &tokenError{invalidClient: true}

func (e *tokenError) write(w http.ResponseWriter) {
	if e.invalidClient {
		writeInvalidClient(w)
		return
	}
	writeOAuthError(w, e.status, e.code, e.desc)
}

// readTokenForm reads the request's parameters: section 3.2, in the
// application/x-www-form-urlencoded body, none more than once.
func (b *baseline) readTokenForm(w http.ResponseWriter, r *http.Request) (url.Values, *tokenError) {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/x-www-form-urlencoded" {
		return nil, badRequest("invalid_request", "the body must be application/x-www-form-urlencoded")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, b.cfg.MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, badRequest("invalid_request", "request body too large")
		}
		return nil, badRequest("invalid_request", "could not read the request body")
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, badRequest("invalid_request", "malformed form body")
	}
	// Section 3.2: parameters MUST NOT be included more than once; one sent
	// without a value is treated as omitted.
	for name, vs := range form {
		if len(vs) > 1 {
			return nil, badRequest("invalid_request", "parameter "+name+" repeated")
		}
	}
	return form, nil
}

// authenticate checks the client (section 2.3.1: HTTP Basic with
// form-urlencoded id and secret; a client MUST NOT use more than one
// authentication method) and returns its id.
func (b *baseline) authenticate(r *http.Request, form url.Values) (string, *tokenError) {
	user, pass, ok := r.BasicAuth()
	if ok && (form.Get("client_secret") != "" || form.Get("client_assertion") != "") {
		return "", badRequest("invalid_request", "more than one client authentication method")
	}
	if !ok {
		return "", errInvalidClient
	}
	id, err1 := url.QueryUnescape(user)
	secret, err2 := url.QueryUnescape(pass)
	if err1 != nil || err2 != nil {
		return "", errInvalidClient
	}
	if subtle.ConstantTimeCompare([]byte(id), b.id)&subtle.ConstantTimeCompare([]byte(secret), b.secret) != 1 {
		return "", errInvalidClient
	}
	if cid := form.Get("client_id"); cid != "" && cid != id {
		return "", badRequest("invalid_request", "client_id does not match the authenticated client")
	}
	return id, nil
}

// checkGrant checks the grant type (client_credentials only) and returns
// the granted scope.
func (b *baseline) checkGrant(form url.Values) (string, *tokenError) {
	switch gt := form.Get("grant_type"); gt {
	case "":
		return "", badRequest("invalid_request", "grant_type is required")
	case "client_credentials":
	default:
		return "", badRequest("unsupported_grant_type", "only client_credentials is supported")
	}
	scope, ok := b.grantScope(form.Get("scope"))
	if !ok {
		return "", badRequest("invalid_scope", "requested scope is not allowed for this client")
	}
	return scope, nil
}

// issue signs and writes the access token of client id.
func (b *baseline) issue(w http.ResponseWriter, id, scope string) {
	jti, err := b.newJTI()
	if err != nil {
		writeOAuthError(w, http.StatusInternalServerError, "server_error", "")
		return
	}
	iat := b.cfg.Now().Unix()
	// RFC 9068 section 2.1 header (typ at+jwt) and section 2.2 claims.
	tok := &jwt.Token{
		Header: map[string]any{"typ": "at+jwt", "alg": b.method.Alg(), "kid": b.kid},
		Method: b.method,
		Claims: &accessTokenClaims{
			Issuer:    b.issuer,
			Subject:   id,
			Audience:  b.aud,
			ExpiresAt: iat + b.ttl,
			IssuedAt:  iat,
			ID:        jti,
			ClientID:  id,
			Scope:     scope,
		},
	}
	signed, err := tok.SignedString(b.cfg.Key)
	if err != nil {
		writeOAuthError(w, http.StatusInternalServerError, "server_error", "")
		return
	}
	writeJSON(w, http.StatusOK, tokenResponse{
		AccessToken: signed,
		TokenType:   "Bearer",
		ExpiresIn:   b.ttl,
		Scope:       scope,
	})
}

// grantScope checks a requested scope (RFC 6749 section 3.3) against the
// allowed ones and returns the granted scope string.
func (b *baseline) grantScope(requested string) (string, bool) {
	if requested == "" {
		return b.defScope, true
	}
	toks := strings.Split(requested, " ")
	seen := make(map[string]bool, len(toks))
	granted := make([]string, 0, len(toks))
	for _, t := range toks {
		if !validScopeToken(t) || !b.allowed[t] {
			return "", false
		}
		if !seen[t] {
			seen[t] = true
			granted = append(granted, t)
		}
	}
	return strings.Join(granted, " "), true
}

// validScopeToken reports whether s is a scope-token: 1*( %x21 / %x23-5B /
// %x5D-7E ) (RFC 6749 section 3.3).
func validScopeToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// newJTI returns a random 128-bit token id, base64url without padding.
func (b *baseline) newJTI() (string, error) {
	var raw [16]byte
	if _, err := io.ReadFull(b.cfg.Rand, raw[:]); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(raw[:]), nil
}

// writeInvalidClient answers a failed client authentication: 401 with the
// scheme the client should use (RFC 6749 section 5.2).
func writeInvalidClient(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", `Basic realm="token"`)
	writeOAuthError(w, http.StatusUnauthorized, "invalid_client", "client authentication failed")
}

func writeOAuthError(w http.ResponseWriter, status int, code, desc string) {
	writeJSON(w, status, errorResponse{Error: code, ErrorDescription: desc})
}

// writeJSON writes a token endpoint response, which must not be cached
// (RFC 6749 section 5.1).
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		body = []byte(`{"error":"server_error"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
