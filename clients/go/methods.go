package cached

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"time"
)

// Result is the answer of Get.
type Result struct {
	// Hit is true when the entry was found stored; false for a miss, including a miss the key's
	// sync handler filled (then Value holds the handler's value).
	Hit bool
	// Value is the entry's bytes; nil when there is no entry. A hit of an empty value is a
	// non-nil empty slice.
	Value []byte
	// Stale is true for a hit past its key's ttl on a key with stale_ttl or grace.
	Stale bool
}

// NoExpiry, as Set's ttl, stores the entry without expiry (ttl 0 on the wire). A ttl of 0 means
// the key's configured default.
const NoExpiry time.Duration = -1

// Option modifies one call of Get, Set, Delete or Fetch.
type Option func(*callOptions)

type callOptions struct {
	inHash  bool
	hashKey string
	hashID  any
	ttl     time.Duration
	args    []any
	kwargs  map[string]any
}

// InHash addresses the entry inside the hash hashKey/hashID (pyredis-cache's HashCacheClient
// layout: a field of the hash 00000CLASS#0000000003). hashID is an identity like the entry's.
func InHash(hashKey string, hashID any) Option {
	return func(o *callOptions) { o.inHash, o.hashKey, o.hashID = true, hashKey, hashID }
}

// WithTTL sets the TTL Fetch stores a filled value with (default: the key's configured ttl; use
// NoExpiry for none). Set takes its TTL as a parameter instead.
func WithTTL(ttl time.Duration) Option {
	return func(o *callOptions) { o.ttl = ttl }
}

// WithArgs passes args to the key's sync handler (the request's "args").
func WithArgs(args ...any) Option {
	return func(o *callOptions) { o.args = args }
}

// WithKwargs passes kwargs to the key's sync handler (the request's "kwargs").
func WithKwargs(kwargs map[string]any) Option {
	return func(o *callOptions) { o.kwargs = kwargs }
}

func collect(opts []Option) callOptions {
	var o callOptions
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// entry is an addressed entry: its params as JSON text (`"key":...,"identity":...[,"hashKey":...,"hashId":...]`)
// and its near-cache address.
type entry struct {
	params  []byte // key, identity, hashKey, hashId
	extra   []byte // args, kwargs
	address string
}

func (e entry) addressParams() []byte { return e.params }

func makeEntry(key string, identity any, o *callOptions) (entry, error) {
	if err := validName(key, "key"); err != nil {
		return entry{}, err
	}
	buf := make([]byte, 0, 64)
	buf = append(buf, `,"key":`...)
	buf = appendString(buf, key)
	buf = append(buf, `,"identity":`...)
	buf, err := appendIdentity(buf, "identity", identity)
	if err != nil {
		return entry{}, err
	}
	hashIDKey := ""
	if o.inHash {
		if err := validName(o.hashKey, "hashKey"); err != nil {
			return entry{}, err
		}
		buf = append(buf, `,"hashKey":`...)
		buf = appendString(buf, o.hashKey)
		buf = append(buf, `,"hashId":`...)
		if buf, err = appendIdentity(buf, "hashId", o.hashID); err != nil {
			return entry{}, err
		}
		hashIDKey = identityKey(o.hashID)
	}
	var extra []byte
	if o.args != nil {
		raw, err := json.Marshal(o.args)
		if err != nil {
			return entry{}, invalidParams("args cannot be encoded: %v", err)
		}
		extra = append(append(extra, `,"args":`...), raw...)
	}
	if o.kwargs != nil {
		raw, err := json.Marshal(o.kwargs)
		if err != nil {
			return entry{}, invalidParams("kwargs cannot be encoded: %v", err)
		}
		extra = append(append(extra, `,"kwargs":`...), raw...)
	}
	hk := ""
	if o.inHash {
		hk = o.hashKey
	}
	return entry{params: buf, extra: extra, address: address(key, identityKey(identity), hk, hashIDKey)}, nil
}

// getAnswer is a get's result as sent.
type getAnswer struct {
	Hit      bool    `json:"hit"`
	Value    *string `json:"value"`
	Encoding string  `json:"encoding"`
	Stale    bool    `json:"stale"`
	Lease    string  `json:"lease"`
	NearTTL  *int64  `json:"nearTTL"`
	Cached   *bool   `json:"cached"`
}

func (g *getAnswer) result() (Result, error) {
	r := Result{Hit: g.Hit, Stale: g.Stale}
	if g.Value != nil {
		if g.Encoding == "base64" {
			b, err := base64.StdEncoding.DecodeString(*g.Value)
			if err != nil {
				return Result{}, unavailable(err, "garbled base64 value from the daemon")
			}
			r.Value = b
		} else {
			r.Value = []byte(*g.Value)
		}
	}
	return r, nil
}

func decodeGet(raw json.RawMessage) (*getAnswer, error) {
	var g getAnswer
	if err := json.Unmarshal(raw, &g); err != nil {
		return nil, unavailable(err, "garbled get answer from the daemon")
	}
	return &g, nil
}

// Get reads an entry. It never takes a lease (it sends "lease": false): on a key without a sync
// handler a miss is answered at once, Hit false and Value nil, and never waits for another
// client's fill. On a key with a handler the daemon fills the entry on a miss (Hit false, Value
// the handler's value, nil for "no such entry"). With a near cache, a hit may be answered from the
// process. Options: InHash, WithArgs, WithKwargs.
func (c *Client) Get(ctx context.Context, key string, identity any, opts ...Option) (Result, error) {
	o := collect(opts)
	e, err := makeEntry(key, identity, &o)
	if err != nil {
		return Result{}, err
	}
	g, err := c.get(ctx, nil, e, false)
	if err != nil {
		return Result{}, err
	}
	return g.result()
}

// get sends a get of e (with or without a lease) on cn (nil: any), through the near cache when
// there is one.
func (c *Client) get(ctx context.Context, cn *conn, e entry, lease bool) (*getAnswer, error) {
	near := c.near
	if near != nil {
		if kept, ok := near.lookup(e.address); ok {
			return kept, nil
		}
		var err error
		if cn == nil || cn.isDead() {
			if cn, err = c.pick(ctx, true); err != nil {
				return nil, err
			}
		}
	}
	r, err := c.newRequest(ctx, "get", len(e.params)+len(e.extra)+16)
	if err != nil {
		return nil, err
	}
	r.buf = append(r.buf, e.params...)
	r.buf = append(r.buf, e.extra...)
	if !lease {
		r.buf = append(r.buf, `,"lease":false`...)
	}
	var late func(answer)
	if lease {
		late = c.giveBack(e)
	}
	var token nearToken
	if near != nil {
		token = near.begin(e.address, cn)
	}
	raw, err := c.roundTrip(ctx, cn, true, r, late)
	var g *getAnswer
	if err == nil {
		g, err = decodeGet(raw)
	}
	if near != nil {
		near.finish(e.address, token, g)
	}
	if err != nil {
		return nil, err
	}
	return g, nil
}

// giveBack returns what handles the late answer of a lease get nobody waits for: a lease in it is
// released at once, so that the entry's next asker does not wait for lease_timeout.
func (c *Client) giveBack(e entry) func(answer) {
	return func(a answer) {
		if a.err != nil {
			return
		}
		g, err := decodeGet(a.result)
		if err != nil || g.Lease == "" {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = c.release(ctx, nil, e, g.Lease)
	}
}

// Set stores value for the entry. ttl > 0 is its TTL (fractions of a second allowed); 0 means the
// key's configured ttl; NoExpiry stores it without expiry. Hash entries (InHash) cannot expire.
// Binary values travel base64-encoded.
func (c *Client) Set(ctx context.Context, key string, identity any, value []byte, ttl time.Duration, opts ...Option) error {
	o := collect(opts)
	e, err := makeEntry(key, identity, &o)
	if err != nil {
		return err
	}
	_, err = c.set(ctx, nil, e, value, ttl, "")
	return err
}

type setAnswer struct {
	Stored bool   `json:"stored"`
	Reason string `json:"reason"`
}

func (c *Client) set(ctx context.Context, cn *conn, e entry, value []byte, ttl time.Duration, lease string) (*setAnswer, error) {
	if value == nil {
		value = []byte{}
	}
	r, err := c.newRequest(ctx, "set", len(e.params)+len(value)*4/3+64)
	if err != nil {
		return nil, err
	}
	r.buf = append(r.buf, e.params...)
	r.buf = append(r.buf, e.extra...)
	r.buf = appendValue(r.buf, value)
	if ttl > 0 {
		r.buf = append(r.buf, `,"ttl":`...)
		r.buf = appendSeconds(r.buf, ttl)
	} else if ttl < 0 {
		r.buf = append(r.buf, `,"ttl":0`...)
	}
	if lease != "" {
		r.buf = append(r.buf, `,"lease":`...)
		r.buf = appendString(r.buf, lease)
	}
	raw, err := c.roundTrip(ctx, cn, false, r, nil)
	if err != nil {
		return nil, err
	}
	var s setAnswer
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, unavailable(err, "garbled set answer from the daemon")
	}
	return &s, nil
}

type deletedAnswer struct {
	Deleted int `json:"deleted"`
}

// Delete deletes the entry; true when it existed. It revokes a lease in flight for it.
func (c *Client) Delete(ctx context.Context, key string, identity any, opts ...Option) (bool, error) {
	o := collect(opts)
	e, err := makeEntry(key, identity, &o)
	if err != nil {
		return false, err
	}
	r, err := c.newRequest(ctx, "delete", len(e.params))
	if err != nil {
		return false, err
	}
	r.buf = append(r.buf, e.params...)
	return c.deleted(ctx, r)
}

// DeleteHash deletes the whole hash hashKey/hashID; true when it existed.
func (c *Client) DeleteHash(ctx context.Context, hashKey string, hashID any) (bool, error) {
	if err := validName(hashKey, "hashKey"); err != nil {
		return false, err
	}
	r, err := c.newRequest(ctx, "deleteHash", len(hashKey)+32)
	if err != nil {
		return false, err
	}
	r.buf = append(r.buf, `,"hashKey":`...)
	r.buf = appendString(r.buf, hashKey)
	r.buf = append(r.buf, `,"hashId":`...)
	if r.buf, err = appendIdentity(r.buf, "hashId", hashID); err != nil {
		return false, err
	}
	return c.deleted(ctx, r)
}

func (c *Client) deleted(ctx context.Context, r *request) (bool, error) {
	raw, err := c.roundTrip(ctx, nil, false, r, nil)
	if err != nil {
		return false, err
	}
	var d deletedAnswer
	if err := json.Unmarshal(raw, &d); err != nil {
		return false, unavailable(err, "garbled delete answer from the daemon")
	}
	return d.Deleted > 0, nil
}

// GetHash is Get of an entry inside the hash hashKey/hashID (as Get with InHash).
func (c *Client) GetHash(ctx context.Context, hashKey string, hashID any, key string, identity any, opts ...Option) (Result, error) {
	return c.Get(ctx, key, identity, append(opts, InHash(hashKey, hashID))...)
}

// SetHash is Set of an entry inside the hash hashKey/hashID (as Set with InHash; hash entries
// cannot expire).
func (c *Client) SetHash(ctx context.Context, hashKey string, hashID any, key string, identity any, value []byte, opts ...Option) error {
	return c.Set(ctx, key, identity, value, 0, append(opts, InHash(hashKey, hashID))...)
}

// Ping asks the daemon for "pong".
func (c *Client) Ping(ctx context.Context) error {
	raw, err := c.Call(ctx, "ping", nil)
	if err != nil {
		return err
	}
	var s string
	if json.Unmarshal(raw, &s) != nil || s != "pong" {
		return unavailable(nil, "ping answered %s", raw)
	}
	return nil
}

func (c *Client) release(ctx context.Context, cn *conn, e entry, lease string) (bool, error) {
	r, err := c.newRequest(ctx, "release", len(e.params)+64)
	if err != nil {
		return false, err
	}
	// release takes no args/kwargs: only the entry's address.
	r.buf = append(r.buf, e.addressParams()...)
	r.buf = append(r.buf, `,"lease":`...)
	r.buf = appendString(r.buf, lease)
	raw, err := c.roundTrip(ctx, cn, false, r, nil)
	if err != nil {
		return false, err
	}
	var rel struct {
		Released bool `json:"released"`
	}
	_ = json.Unmarshal(raw, &rel)
	return rel.Released, nil
}
