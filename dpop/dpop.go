// Package dpop checks DPoP proofs (RFC 9449): the JWTs a client signs with
// its own key to show that it holds the key an access token is bound to.
//
// The authorization server (package issuance) checks a proof at the token
// endpoint and binds the token to the proof key's RFC 7638 thumbprint
// (cnf.jkt); a resource server (package revocation, the SDK) checks a proof
// on every request, including its ath claim, and that the proof key is the
// one the token is bound to. Both use Parse. The package has no state
// except ReplayCache and NonceSource, which callers own.
package dpop

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// HeaderType is the typ of a DPoP proof (RFC 9449 §4.2).
const HeaderType = "dpop+jwt"

// SigningAlgs are the proof algorithms accepted: asymmetric only (RFC 9449
// §4.2: MUST NOT be none or a MAC). Discovery advertises them as
// dpop_signing_alg_values_supported.
var SigningAlgs = []string{"ES256", "ES384", "ES512", "PS256", "RS256", "EdDSA"}

// MaxProofLen bounds the work spent on a presented proof; an RSA-4096 key
// and signature fit with room to spare.
const MaxProofLen = 8 << 10

// Defaults of Params.
const (
	// DefaultWindow is how old (by iat) a proof may be.
	DefaultWindow = 60 * time.Second
	// DefaultSkew is how far in the future iat may be.
	DefaultSkew = 5 * time.Second
)

// ErrInvalidProof is wrapped by every error of Parse: the proof is
// malformed, badly signed, or does not fit the request.
var ErrInvalidProof = errors.New("dpop: invalid proof")

// Reasons Parse refuses a proof; each wraps ErrInvalidProof.
var (
	ErrMalformed = fmt.Errorf("%w: malformed", ErrInvalidProof)
	ErrType      = fmt.Errorf("%w: typ is not dpop+jwt", ErrInvalidProof)
	ErrAlg       = fmt.Errorf("%w: alg is not an accepted asymmetric algorithm", ErrInvalidProof)
	ErrKey       = fmt.Errorf("%w: jwk header is not a usable public key", ErrInvalidProof)
	ErrSignature = fmt.Errorf("%w: signature does not verify", ErrInvalidProof)
	ErrMethod    = fmt.Errorf("%w: htm does not match the request method", ErrInvalidProof)
	ErrURI       = fmt.Errorf("%w: htu does not match the request URI", ErrInvalidProof)
	ErrIssuedAt  = fmt.Errorf("%w: iat outside the accepted window", ErrInvalidProof)
	ErrATH       = fmt.Errorf("%w: ath missing or not the hash of the access token", ErrInvalidProof)
	ErrJTI       = fmt.Errorf("%w: jti missing or too long", ErrInvalidProof)
)

// Params says what request a proof must fit.
type Params struct {
	// Method is the HTTP method of the request (htm).
	Method string
	// URL is the request URL (htu); its query and fragment are ignored and
	// it is normalized like htu (NormalizeURI).
	URL string
	// Now is the time iat is checked against.
	Now time.Time
	// Window is how old a proof may be; 0 means DefaultWindow. Skew is how
	// far iat may be in the future; 0 means DefaultSkew.
	Window, Skew time.Duration
	// AccessToken, when set, requires ath to be its hash (RFC 9449 §4.3
	// step 11: resource servers).
	AccessToken string
}

// Proof is a checked DPoP proof.
type Proof struct {
	// JKT is the RFC 7638 SHA-256 thumbprint of the proof key, base64url:
	// the value of cnf.jkt in a bound token.
	JKT string
	// JTI, IssuedAt and Nonce are the claims (Nonce "" when absent).
	JTI      string
	IssuedAt time.Time
	Nonce    string
	// Key is the proof's public key.
	Key crypto.PublicKey
}

type claims struct {
	JTI   string          `json:"jti"`
	HTM   string          `json:"htm"`
	HTU   string          `json:"htu"`
	IAT   json.RawMessage `json:"iat"`
	ATH   string          `json:"ath,omitempty"`
	Nonce string          `json:"nonce,omitempty"`
}

func (c *claims) GetExpirationTime() (*jwt.NumericDate, error) { return nil, nil }
func (c *claims) GetIssuedAt() (*jwt.NumericDate, error)       { return nil, nil }
func (c *claims) GetNotBefore() (*jwt.NumericDate, error)      { return nil, nil }
func (c *claims) GetIssuer() (string, error)                   { return "", nil }
func (c *claims) GetSubject() (string, error)                  { return "", nil }
func (c *claims) GetAudience() (jwt.ClaimStrings, error)       { return nil, nil }

// maxJTILen bounds jti; RFC 9449 §4.2 asks for at least 96 bits of entropy,
// so short ones are fine too.
const maxJTILen = 256

// Parse checks the DPoP proof of a request (RFC 9449 §4.3): one compact
// JWS with typ dpop+jwt, an asymmetric alg among SigningAlgs that matches
// the key, a jwk header holding a public key only, a valid signature, jti,
// htm equal to p.Method, htu equal to p.URL (both normalized, without query
// and fragment), iat within [Now-Window-Skew, Now+Skew], and with
// p.AccessToken set an ath equal to its hash. Nonces and replay are the
// caller's: see Proof.Nonce, NonceSource and ReplayCache. Errors wrap
// ErrInvalidProof.
func Parse(proof string, p Params) (*Proof, error) {
	if proof == "" || len(proof) > MaxProofLen || strings.Count(proof, ".") != 2 {
		return nil, ErrMalformed
	}
	window, skew := p.Window, p.Skew
	if window <= 0 {
		window = DefaultWindow
	}
	if skew <= 0 {
		skew = DefaultSkew
	}
	var c claims
	var key crypto.PublicKey
	var jkt string
	parser := jwt.NewParser(jwt.WithValidMethods(SigningAlgs), jwt.WithoutClaimsValidation(), jwt.WithStrictDecoding())
	_, err := parser.ParseWithClaims(proof, &c, func(t *jwt.Token) (any, error) {
		if typ, _ := t.Header["typ"].(string); !strings.EqualFold(typ, HeaderType) {
			return nil, ErrType
		}
		raw, ok := t.Header["jwk"].(map[string]any)
		if !ok {
			return nil, ErrKey
		}
		k, thumb, err := ParseJWK(raw)
		if err != nil {
			return nil, err
		}
		if t.Method == nil || !algFits(t.Method.Alg(), k) {
			return nil, ErrAlg
		}
		key, jkt = k, thumb
		return k, nil
	})
	if err != nil {
		switch {
		case errors.Is(err, ErrInvalidProof):
			return nil, unwrapOurs(err)
		case errors.Is(err, jwt.ErrTokenSignatureInvalid):
			return nil, ErrSignature
		case errors.Is(err, jwt.ErrTokenUnverifiable), errors.Is(err, jwt.ErrSignatureInvalid):
			return nil, ErrAlg
		}
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if c.JTI == "" || len(c.JTI) > maxJTILen {
		return nil, ErrJTI
	}
	if c.HTM == "" || c.HTM != p.Method {
		return nil, ErrMethod
	}
	want, err := NormalizeURI(p.URL)
	if err != nil {
		return nil, fmt.Errorf("%w: request URL: %v", ErrURI, err)
	}
	got, err := NormalizeURI(c.HTU)
	if err != nil || got != want {
		return nil, ErrURI
	}
	iat, ok := numericDate(c.IAT)
	if !ok {
		return nil, ErrIssuedAt
	}
	if iat.Before(p.Now.Add(-window-skew)) || iat.After(p.Now.Add(skew)) {
		return nil, ErrIssuedAt
	}
	if p.AccessToken != "" {
		h := sha256.Sum256([]byte(p.AccessToken))
		want := base64.RawURLEncoding.EncodeToString(h[:])
		if subtle.ConstantTimeCompare([]byte(want), []byte(c.ATH)) != 1 {
			return nil, ErrATH
		}
	}
	return &Proof{JKT: jkt, JTI: c.JTI, IssuedAt: iat, Nonce: c.Nonce, Key: key}, nil
}

// unwrapOurs returns the first of our sentinel errors in err's chain.
func unwrapOurs(err error) error {
	for _, e := range []error{ErrType, ErrKey, ErrAlg, ErrSignature, ErrMalformed} {
		if errors.Is(err, e) {
			return e
		}
	}
	return ErrMalformed
}

// numericDate reads a JSON number of seconds (RFC 7519 §2), fractional
// allowed.
func numericDate(raw json.RawMessage) (time.Time, bool) {
	var f float64
	if len(raw) == 0 || raw[0] == '"' || json.Unmarshal(raw, &f) != nil || f <= 0 || f > 1<<40 {
		return time.Time{}, false
	}
	sec := int64(f)
	return time.Unix(sec, int64((f-float64(sec))*1e9)), true
}

// algFits reports whether alg is one of SigningAlgs and made for key k.
func algFits(alg string, k crypto.PublicKey) bool {
	switch k := k.(type) {
	case *ecdsa.PublicKey:
		switch alg {
		case "ES256":
			return k.Curve == elliptic.P256()
		case "ES384":
			return k.Curve == elliptic.P384()
		case "ES512":
			return k.Curve == elliptic.P521()
		}
	case *rsa.PublicKey:
		return alg == "RS256" || alg == "PS256"
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

// privateMembers are JWK members that only a private or symmetric key has
// (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037 §2).
var privateMembers = []string{"d", "p", "q", "dp", "dq", "qi", "oth", "k"}

// minRSABits is the smallest RSA modulus accepted (RFC 7518 §3.3).
const minRSABits = 2048

// ParseJWK reads a public JWK (RFC 7517) given as a decoded JSON object:
// EC P-256/P-384/P-521, RSA of at least 2048 bits, or OKP Ed25519. A key
// with private members is refused (RFC 9449 §4.3 step 7). It returns the
// key and its RFC 7638 SHA-256 thumbprint, base64url.
func ParseJWK(m map[string]any) (crypto.PublicKey, string, error) {
	for _, n := range privateMembers {
		if _, ok := m[n]; ok {
			return nil, "", fmt.Errorf("%w: private key member %q", ErrKey, n)
		}
	}
	j := jwkMembers(m)
	var canon []byte
	var key crypto.PublicKey
	var err error
	switch j.str("kty") {
	case "EC":
		key, canon, err = j.ec()
	case "RSA":
		key, canon, err = j.rsa()
	case "OKP":
		key, canon, err = j.okp()
	default:
		err = fmt.Errorf("%w: unsupported kty", ErrKey)
	}
	if err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256(canon)
	return key, base64.RawURLEncoding.EncodeToString(sum[:]), nil
}

// jwkMembers is a JWK's members, as ParseJWK reads them.
type jwkMembers map[string]any

func (m jwkMembers) str(name string) string { s, _ := m[name].(string); return s }

// b64 is a base64url member, which must be present.
func (m jwkMembers) b64(name string) ([]byte, error) {
	s := m.str(name)
	if s == "" {
		return nil, fmt.Errorf("%w: missing %s", ErrKey, name)
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: bad base64url in %s", ErrKey, name)
	}
	return b, nil
}

// ec is an EC P-256/P-384/P-521 key and its RFC 7638 canonical members.
func (m jwkMembers) ec() (crypto.PublicKey, []byte, error) {
	var curve elliptic.Curve
	switch m.str("crv") {
	case "P-256":
		curve = elliptic.P256()
	case "P-384":
		curve = elliptic.P384()
	case "P-521":
		curve = elliptic.P521()
	default:
		return nil, nil, fmt.Errorf("%w: unsupported curve", ErrKey)
	}
	x, err := m.b64("x")
	if err != nil {
		return nil, nil, err
	}
	y, err := m.b64("y")
	if err != nil {
		return nil, nil, err
	}
	size := (curve.Params().BitSize + 7) / 8
	if len(x) != size || len(y) != size {
		return nil, nil, fmt.Errorf("%w: coordinate length", ErrKey)
	}
	// Uncompressed point encoding; NewPublicKey checks it is on the curve.
	pt := append(append([]byte{4}, x...), y...)
	pk, err := ecdsa.ParseUncompressedPublicKey(curve, pt)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: point not on the curve", ErrKey)
	}
	return pk, fmt.Appendf(nil, `{"crv":%q,"kty":"EC","x":%q,"y":%q}`, m.str("crv"), m.str("x"), m.str("y")), nil
}

// rsa is an RSA key of at least minRSABits and its canonical members.
func (m jwkMembers) rsa() (crypto.PublicKey, []byte, error) {
	n, err := m.b64("n")
	if err != nil {
		return nil, nil, err
	}
	e, err := m.b64("e")
	if err != nil {
		return nil, nil, err
	}
	if len(n) == 0 || n[0] == 0 || len(e) == 0 || e[0] == 0 || len(e) > 4 {
		return nil, nil, fmt.Errorf("%w: RSA parameters", ErrKey)
	}
	N := new(big.Int).SetBytes(n)
	E := new(big.Int).SetBytes(e)
	if N.BitLen() < minRSABits || N.BitLen() > 8192 || E.Int64() < 3 || E.Bit(0) == 0 {
		return nil, nil, fmt.Errorf("%w: RSA key size or exponent", ErrKey)
	}
	return &rsa.PublicKey{N: N, E: int(E.Int64())}, fmt.Appendf(nil, `{"e":%q,"kty":"RSA","n":%q}`, m.str("e"), m.str("n")), nil
}

// okp is an Ed25519 key and its canonical members.
func (m jwkMembers) okp() (crypto.PublicKey, []byte, error) {
	if m.str("crv") != "Ed25519" {
		return nil, nil, fmt.Errorf("%w: unsupported OKP curve", ErrKey)
	}
	x, err := m.b64("x")
	if err != nil {
		return nil, nil, err
	}
	if len(x) != ed25519.PublicKeySize {
		return nil, nil, fmt.Errorf("%w: Ed25519 key length", ErrKey)
	}
	return ed25519.PublicKey(x), fmt.Appendf(nil, `{"crv":"Ed25519","kty":"OKP","x":%q}`, m.str("x")), nil
}

// NormalizeURI is the htu comparison form (RFC 9449 §4.3 step 9): an
// absolute http(s) URI without query and fragment, with scheme and host in
// lower case, the scheme's default port removed and an empty path made "/"
// (RFC 3986 §6.2.2, §6.2.3).
func NormalizeURI(s string) (string, error) {
	if s == "" || len(s) > 2048 {
		return "", errors.New("empty or too long")
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", err
	}
	scheme := strings.ToLower(u.Scheme)
	if (scheme != "http" && scheme != "https") || u.Host == "" || u.User != nil || u.Opaque != "" {
		return "", errors.New("not an absolute http(s) URI")
	}
	host := strings.ToLower(u.Hostname())
	port := u.Port()
	if (scheme == "http" && port == "80") || (scheme == "https" && port == "443") {
		port = ""
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port != "" {
		host = net.JoinHostPort(strings.Trim(host, "[]"), port)
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	return scheme + "://" + host + path, nil
}

// ATH is the ath claim for an access token: base64url(SHA-256(token)).
func ATH(accessToken string) string {
	h := sha256.Sum256([]byte(accessToken))
	return base64.RawURLEncoding.EncodeToString(h[:])
}
