package issuance

import (
	"crypto/cipher"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// Opaque access tokens are sealed, not stored: any node reads one back with
// nothing but the tenant's sealing key, so issuing one needs no write and
// introspecting one needs no lookup besides that key.
//
//	token     = "tly1." kid "." base64url(nonce ‖ AES-256-GCM(plaintext))
//	aad       = "tly1" ‖ lp(tenant) ‖ lp(kid)          lp = uvarint length ‖ bytes
//	plaintext = version(1) ‖ lp(jti) ‖ lp(tenant) ‖ lp(client_id) ‖ lp(sub)
//	            ‖ lp(scope) ‖ uvarint(#aud) ‖ lp(aud)… ‖ varint(iat) ‖ varint(exp)
//	            [‖ lp(cnf.jkt)]                          version 2 only (DPoP-bound)
//
// The 96-bit nonce is random. NIST SP 800-38D §8.3 bounds random-nonce GCM at
// 2^32 messages per key; sealing keys must be rotated well before a key has
// sealed that many tokens (at 10,000 tokens/s across the cluster that is
// about five days).
const (
	opaquePrefix  = "tly1."
	opaqueAADTag  = "tly1"
	opaqueVersion = 1
	// opaqueVersionDPoP adds cnf.jkt; bearer tokens keep version 1 so that
	// nodes that predate DPoP still read them.
	opaqueVersionDPoP = 2
	gcmNonceSize      = 12
	gcmTagSize        = 16

	// maxOpaqueLen bounds the work spent on a presented token.
	maxOpaqueLen = 8 << 10
)

var (
	errOpaqueFormat = errors.New("not a tly1 opaque token")
	errOpaqueKey    = errors.New("sealing key unknown to this tenant")
	errOpaqueOpen   = errors.New("seal does not authenticate")
	errOpaqueBody   = errors.New("malformed sealed claims")
)

func opaqueAAD(tenant, kid string) []byte {
	b := make([]byte, 0, len(opaqueAADTag)+len(tenant)+len(kid)+2*binary.MaxVarintLen64)
	b = append(b, opaqueAADTag...)
	b = appendLP(b, tenant)
	return appendLP(b, kid)
}

// sealOpaque mints an opaque token for d with sealing key kid/aead.
func sealOpaque(aead cipher.AEAD, kid string, rnd io.Reader, d *tokenData) (string, error) {
	pt := encodeOpaque(d)
	buf := make([]byte, gcmNonceSize, gcmNonceSize+len(pt)+gcmTagSize)
	if _, err := io.ReadFull(rnd, buf); err != nil {
		return "", fmt.Errorf("issuance: random nonce: %w", err)
	}
	buf = aead.Seal(buf, buf[:gcmNonceSize], pt, opaqueAAD(d.Tenant, kid))
	var sb strings.Builder
	sb.Grow(len(opaquePrefix) + len(kid) + 1 + base64.RawURLEncoding.EncodedLen(len(buf)))
	sb.WriteString(opaquePrefix)
	sb.WriteString(kid)
	sb.WriteByte('.')
	sb.WriteString(base64.RawURLEncoding.EncodeToString(buf))
	return sb.String(), nil
}

// unsealOpaque opens an opaque token of tenant. lookup returns the AEAD of a
// sealing key of this tenant, or nil. Errors wrap ErrInvalidToken. It does
// not check times.
func unsealOpaque(tenant, token string, lookup func(kid string) cipher.AEAD) (tokenData, error) {
	if len(token) > maxOpaqueLen {
		return tokenData{}, fmt.Errorf("%w: %w", ErrInvalidToken, errOpaqueFormat)
	}
	rest, ok := strings.CutPrefix(token, opaquePrefix)
	if !ok {
		return tokenData{}, fmt.Errorf("%w: %w", ErrInvalidToken, errOpaqueFormat)
	}
	kid, enc, ok := strings.Cut(rest, ".")
	if !ok || kid == "" {
		return tokenData{}, fmt.Errorf("%w: %w", ErrInvalidToken, errOpaqueFormat)
	}
	sealed, err := base64.RawURLEncoding.Strict().DecodeString(enc)
	if err != nil || len(sealed) < gcmNonceSize+gcmTagSize {
		return tokenData{}, fmt.Errorf("%w: %w", ErrInvalidToken, errOpaqueFormat)
	}
	aead := lookup(kid)
	if aead == nil {
		return tokenData{}, fmt.Errorf("%w: %w", ErrInvalidToken, errOpaqueKey)
	}
	pt, err := aead.Open(nil, sealed[:gcmNonceSize], sealed[gcmNonceSize:], opaqueAAD(tenant, kid))
	if err != nil {
		return tokenData{}, fmt.Errorf("%w: %w", ErrInvalidToken, errOpaqueOpen)
	}
	d, err := decodeOpaque(pt)
	if err != nil {
		return tokenData{}, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	if d.Tenant != tenant {
		return tokenData{}, fmt.Errorf("%w: sealed for another tenant", ErrInvalidToken)
	}
	d.KeyID = kid
	return d, nil
}

func encodeOpaque(d *tokenData) []byte {
	n := 1 + 8*binary.MaxVarintLen64 + len(d.JTI) + len(d.Tenant) + len(d.ClientID) + len(d.Subject)
	for _, s := range d.Scope {
		n += len(s) + 1
	}
	for _, a := range d.Audience {
		n += len(a) + binary.MaxVarintLen64
	}
	n += len(d.JKT) + binary.MaxVarintLen64
	b := make([]byte, 0, n)
	if d.JKT != "" {
		b = append(b, opaqueVersionDPoP)
	} else {
		b = append(b, opaqueVersion)
	}
	b = appendLP(b, d.JTI)
	b = appendLP(b, d.Tenant)
	b = appendLP(b, d.ClientID)
	b = appendLP(b, d.Subject)
	b = appendLP(b, strings.Join(d.Scope, " "))
	b = binary.AppendUvarint(b, uint64(len(d.Audience)))
	for _, a := range d.Audience {
		b = appendLP(b, a)
	}
	b = binary.AppendVarint(b, d.IssuedAt.Unix())
	b = binary.AppendVarint(b, d.ExpiresAt.Unix())
	if d.JKT != "" {
		b = appendLP(b, d.JKT)
	}
	return appendOpaqueCnf(b, d) // cnf.go
}

// opaqueReader decodes the plaintext of an opaque token; the first error
// sticks.
type opaqueReader struct {
	b   []byte
	err error
}

func (r *opaqueReader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errOpaqueBody
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *opaqueReader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = errOpaqueBody
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *opaqueReader) str() string {
	n := r.uvarint()
	if r.err != nil {
		return ""
	}
	if n > uint64(len(r.b)) {
		r.err = errOpaqueBody
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

// decodeOpaque parses the sealed plaintext. Only authenticated bytes reach
// it, but it is written (and fuzzed) as if they were hostile.
func decodeOpaque(b []byte) (tokenData, error) {
	if len(b) == 0 || (b[0] != opaqueVersion && b[0] != opaqueVersionDPoP) {
		return tokenData{}, errOpaqueBody
	}
	r := &opaqueReader{b: b[1:]}
	d := tokenData{Format: FormatOpaque}
	d.JTI = r.str()
	d.Tenant = r.str()
	d.ClientID = r.str()
	d.Subject = r.str()
	scope := r.str()
	naud := r.uvarint()
	if r.err == nil && naud > uint64(len(r.b)) { // each audience takes at least one byte
		r.err = errOpaqueBody
	}
	if r.err == nil && naud > 0 {
		d.Audience = make([]string, 0, naud)
		for i := uint64(0); i < naud && r.err == nil; i++ {
			d.Audience = append(d.Audience, r.str())
		}
	}
	iat := r.varint()
	exp := r.varint()
	if b[0] == opaqueVersionDPoP {
		if d.JKT = r.str(); r.err == nil && d.JKT == "" {
			r.err = errOpaqueBody
		}
	}
	readOpaqueCnf(r, &d) // cnf.go
	if r.err != nil {
		return tokenData{}, r.err
	}
	if len(r.b) != 0 || d.JTI == "" || d.Tenant == "" || d.ClientID == "" {
		return tokenData{}, errOpaqueBody
	}
	// Keep times within what time.Unix and JSON consumers handle sanely.
	const maxSec = math.MaxInt64 / int64(time.Second)
	if iat <= 0 || exp <= 0 || iat > maxSec || exp > maxSec {
		return tokenData{}, errOpaqueBody
	}
	if scope != "" {
		s, err := ParseScope(scope)
		if err != nil {
			return tokenData{}, errOpaqueBody
		}
		d.Scope = s
	}
	d.IssuedAt = time.Unix(iat, 0)
	d.ExpiresAt = time.Unix(exp, 0)
	return d, nil
}
