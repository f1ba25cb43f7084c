// Package dpoptest builds DPoP proofs (RFC 9449) for tests with go-jose, a
// library independent of the golang-jwt code that checks them.
package dpoptest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Key is a client's DPoP key.
type Key struct {
	Alg     jose.SignatureAlgorithm
	Private crypto.Signer
}

// NewKey makes a key for alg: ES256, ES384, ES512, RS256, PS256 or EdDSA.
func NewKey(alg string) *Key {
	var k crypto.Signer
	var err error
	switch alg {
	case "ES256":
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ES384":
		k, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "ES512":
		k, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	case "RS256", "PS256":
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	case "EdDSA":
		_, k, err = ed25519.GenerateKey(rand.Reader)
	default:
		panic("dpoptest: unsupported alg " + alg)
	}
	if err != nil {
		panic(err)
	}
	return &Key{Alg: jose.SignatureAlgorithm(alg), Private: k}
}

// JKT is the key's RFC 7638 thumbprint, base64url, computed by go-jose.
func (k *Key) JKT() string {
	jwk := jose.JSONWebKey{Key: k.Private.Public()}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(tp)
}

// Claims of a proof; zero fields are filled in by Proof (JTI random, IAT
// now) and omitted when Omit names them.
type Claims struct {
	HTM, HTU string
	IAT      time.Time
	JTI      string
	ATH      string // set from AccessToken when empty
	Nonce    string
	// AccessToken, when set, adds ath.
	AccessToken string
	// Typ overrides the header typ ("dpop+jwt").
	Typ string
	// Omit lists claims to leave out ("jti", "iat", "htm", "htu").
	Omit []string
}

// Proof signs a proof with k, embedding its public JWK.
func (k *Key) Proof(c Claims) string {
	if c.JTI == "" {
		var b [16]byte
		_, _ = rand.Read(b[:])
		c.JTI = base64.RawURLEncoding.EncodeToString(b[:])
	}
	if c.IAT.IsZero() {
		c.IAT = time.Now()
	}
	if c.ATH == "" && c.AccessToken != "" {
		h := sha256.Sum256([]byte(c.AccessToken))
		c.ATH = base64.RawURLEncoding.EncodeToString(h[:])
	}
	m := map[string]any{"htm": c.HTM, "htu": c.HTU, "iat": c.IAT.Unix(), "jti": c.JTI}
	if c.ATH != "" {
		m["ath"] = c.ATH
	}
	if c.Nonce != "" {
		m["nonce"] = c.Nonce
	}
	for _, o := range c.Omit {
		delete(m, o)
	}
	payload, _ := json.Marshal(m)
	typ := c.Typ
	if typ == "" {
		typ = "dpop+jwt"
	}
	opts := (&jose.SignerOptions{EmbedJWK: true}).WithType(jose.ContentType(typ))
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: k.Alg, Key: k.Private}, opts)
	if err != nil {
		panic(err)
	}
	jws, err := s.Sign(payload)
	if err != nil {
		panic(err)
	}
	out, err := jws.CompactSerialize()
	if err != nil {
		panic(err)
	}
	return out
}
