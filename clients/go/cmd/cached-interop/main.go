// Command cached-interop is the Go client's side of the cross-client interop test: it reads one
// JSON request per line on stdin and writes one JSON answer line on stdout for each.
//
//	{"op":"set","socket":S,"key":K,"identity":I,"value":B64}  ->  {"ok":true}
//	{"op":"get","socket":S,"key":K,"identity":I}              ->  {"hit":true,"value":B64} or {"hit":false,"value":null}
//
// Optional members "hashKey" and "hashId" address a hash entry. Identities are JSON integers (of
// any size), strings, or {"bigint": "digits"}. A failure is answered {"error":{"code":C,"message":M}}
// (code 0 for a failure that is not a JSON-RPC error, such as an unreachable daemon).
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"time"

	cached "github.com/cached-dev/cached/clients/go"
)

type request struct {
	Op       string          `json:"op"`
	Socket   string          `json:"socket"`
	Key      string          `json:"key"`
	Identity json.RawMessage `json:"identity"`
	HashKey  *string         `json:"hashKey"`
	HashID   json.RawMessage `json:"hashId"`
	Value    *string         `json:"value"`
}

func main() {
	clients := map[string]*cached.Client{}
	in := bufio.NewReaderSize(os.Stdin, 1<<20)
	out := bufio.NewWriter(os.Stdout)
	for {
		line, err := in.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) > 0 {
			answer := handle(clients, line)
			b, _ := json.Marshal(answer)
			out.Write(append(b, '\n'))
			out.Flush()
		}
		if err != nil {
			break
		}
	}
	for _, c := range clients {
		c.Close()
	}
}

func failure(err error) map[string]any {
	code := 0
	var e *cached.Error
	if errors.As(err, &e) {
		code = e.Code
	}
	return map[string]any{"error": map[string]any{"code": code, "message": err.Error()}}
}

func handle(clients map[string]*cached.Client, line []byte) map[string]any {
	var r request
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	if err := dec.Decode(&r); err != nil {
		return failure(fmt.Errorf("bad request line: %v", err))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := clients[r.Socket]
	if c == nil {
		var err error
		if c, err = cached.Dial(ctx, r.Socket); err != nil {
			return failure(err)
		}
		clients[r.Socket] = c
	}
	identity, err := decodeIdentity(r.Identity)
	if err != nil {
		return failure(err)
	}
	var opts []cached.Option
	if r.HashKey != nil {
		hashID, err := decodeIdentity(r.HashID)
		if err != nil {
			return failure(err)
		}
		opts = append(opts, cached.InHash(*r.HashKey, hashID))
	}
	switch r.Op {
	case "set":
		if r.Value == nil {
			return failure(errors.New("set needs a base64 value"))
		}
		value, err := base64.StdEncoding.DecodeString(*r.Value)
		if err != nil {
			return failure(fmt.Errorf("value is not base64: %v", err))
		}
		if err := c.Set(ctx, r.Key, identity, value, 0, opts...); err != nil {
			return failure(err)
		}
		return map[string]any{"ok": true}
	case "get":
		res, err := c.Get(ctx, r.Key, identity, opts...)
		if err != nil {
			return failure(err)
		}
		if res.Value == nil {
			return map[string]any{"hit": res.Hit, "value": nil}
		}
		return map[string]any{"hit": res.Hit, "value": base64.StdEncoding.EncodeToString(res.Value)}
	}
	return failure(fmt.Errorf("unknown op %q", r.Op))
}

// decodeIdentity: a JSON integer (kept exact as a json.Number, which the client takes), a string, or
// {"bigint": "..."}; anything else is passed on for the client to refuse (-32602).
func decodeIdentity(raw json.RawMessage) (any, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("bad identity %s", raw)
	}
	if m, ok := v.(map[string]any); ok {
		if s, ok := m["bigint"].(string); ok {
			if n, ok := new(big.Int).SetString(s, 10); ok {
				return n, nil
			}
		}
	}
	return v, nil
}
