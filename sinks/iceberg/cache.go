package iceberg

import (
	"context"
	"fmt"
	"sync"
)

// readCached reads the table's file at loc (metadata, manifest list or
// manifest: files never rewritten) through the table's cache, decoding it
// with decode; what names the file in errors. Files outside the table's
// location are refused, whatever names them.
func readCached[T any](ctx context.Context, t *Table, loc, what string, decode func([]byte) (T, error)) (T, error) {
	var zero T
	if v, ok := t.cache.get(loc); ok {
		return v.(T), nil
	}
	key, err := t.key(loc)
	if err != nil {
		return zero, fmt.Errorf("iceberg table %s: %w", t.o.Ident, err)
	}
	b, err := t.o.Bucket.ReadAll(ctx, key)
	if err != nil {
		return zero, fmt.Errorf("iceberg table %s: read %s: %w", t.o.Ident, what, err)
	}
	v, err := decode(b)
	if err != nil {
		return zero, fmt.Errorf("iceberg table %s: %s %s: %w", t.o.Ident, what, loc, err)
	}
	t.cache.putSized(loc, v, len(b))
	return v, nil
}

// fileCache holds decoded immutable files (manifests, manifest lists,
// metadata) up to a byte budget, oldest out first.
type fileCache struct {
	mu     sync.Mutex
	budget int
	size   int
	items  map[string]cached
	order  []string
}

type cached struct {
	v    any
	size int
}

func newFileCache(budget int) *fileCache {
	return &fileCache{budget: budget, items: map[string]cached{}}
}

func (c *fileCache) get(k string) (any, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.items[k]
	return v.v, ok
}

func (c *fileCache) put(k string, v any) { c.putSized(k, v, 4096) }

func (c *fileCache) putSized(k string, v any, size int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.items[k]; ok {
		return
	}
	c.items[k] = cached{v: v, size: size}
	c.order = append(c.order, k)
	c.size += size
	for c.size > c.budget && len(c.order) > 1 {
		old := c.order[0]
		c.order = c.order[1:]
		c.size -= c.items[old].size
		delete(c.items, old)
	}
}
