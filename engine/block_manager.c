/* block_manager.c - the pool of KV blocks: allocation, reference counts, and prefix caching
 * by chain hash (after vLLM's block pool).
 *
 * A block is in exactly one of three states:
 *   free    ref 0, no hash           on free_stack
 *   cached  ref 0, hash registered   on the LRU list (oldest first); evicted only when no free
 *                                    block is left, and reusable by a prompt with that prefix
 *   used    ref > 0                  owned by one or more sequences (shared prefixes)
 * The hash of block i of a sequence covers its tokens and the hash of block i-1 (and a salt,
 * e.g. a per-request RoPE factor), so equal hashes mean equal prefixes; hits are verified
 * against the stored tokens and parent hash, so a 64-bit collision can never corrupt output.
 * Block 0 is the null block: never allocated, used to pad block tables. */
#include <string.h>

#include <stdio.h>
#include <stdlib.h>

#include "../common/common.h"
#include "engine_internal.h"

int bm_init(struct block_manager *bm, int n_blocks, int block_size)
{
    memset(bm, 0, sizeof *bm);
    if (n_blocks < 2 || block_size < 1) return -1;
    bm->n_blocks = n_blocks;
    bm->block_size = block_size;
    bm->ref = xcalloc(n_blocks, sizeof(int));
    bm->hash = xcalloc(n_blocks, sizeof(uint64_t));
    bm->parent = xcalloc(n_blocks, sizeof(uint64_t));
    bm->tokens = xcalloc((size_t)n_blocks * block_size, sizeof(int32_t));
    bm->free_stack = xmalloc(sizeof(int) * n_blocks);
    bm->lru_prev = xmalloc(sizeof(int) * n_blocks);
    bm->lru_next = xmalloc(sizeof(int) * n_blocks);
    bm->chain = xmalloc(sizeof(int) * n_blocks);
    bm->n_buckets = 1;
    while (bm->n_buckets < n_blocks) bm->n_buckets <<= 1;
    bm->bucket = xmalloc(sizeof(int) * bm->n_buckets);
    for (int i = 0; i < bm->n_buckets; i++) bm->bucket[i] = -1;
    /* push in reverse so block 1 is handed out first */
    for (int b = n_blocks - 1; b >= 1; b--) bm->free_stack[bm->n_free++] = b;
    bm->lru_head = bm->lru_tail = -1;
    return 0;
}

void bm_free(struct block_manager *bm)
{
    free(bm->ref);
    free(bm->hash);
    free(bm->parent);
    free(bm->tokens);
    free(bm->free_stack);
    free(bm->lru_prev);
    free(bm->lru_next);
    free(bm->chain);
    free(bm->bucket);
    memset(bm, 0, sizeof *bm);
}

int bm_available(const struct block_manager *bm) { return bm->n_free + bm->n_cached; }
int bm_used(const struct block_manager *bm) { return bm->n_blocks - 1 - bm->n_free - bm->n_cached; }

static void lru_remove(struct block_manager *bm, int b)
{
    int p = bm->lru_prev[b], n = bm->lru_next[b];
    if (p >= 0) bm->lru_next[p] = n; else bm->lru_head = n;
    if (n >= 0) bm->lru_prev[n] = p; else bm->lru_tail = p;
    bm->n_cached--;
}

static void lru_push(struct block_manager *bm, int b)
{
    bm->lru_prev[b] = bm->lru_tail;
    bm->lru_next[b] = -1;
    if (bm->lru_tail >= 0) bm->lru_next[bm->lru_tail] = b; else bm->lru_head = b;
    bm->lru_tail = b;
    bm->n_cached++;
}

static void table_remove(struct block_manager *bm, int b)
{
    int *pp = &bm->bucket[bm->hash[b] & (uint64_t)(bm->n_buckets - 1)];
    while (*pp >= 0 && *pp != b) pp = &bm->chain[*pp];
    CHECK(*pp == b, "block %d missing from the prefix table", b);
    *pp = bm->chain[b];
    bm->hash[b] = 0;
}

int bm_alloc(struct block_manager *bm)
{
    int b;
    if (bm->n_free > 0) {
        b = bm->free_stack[--bm->n_free];
    } else if (bm->lru_head >= 0) {
        b = bm->lru_head; /* evict the least recently used cached block */
        lru_remove(bm, b);
        table_remove(bm, b);
    } else {
        return -1;
    }
    CHECK(bm->ref[b] == 0 && bm->hash[b] == 0, "block %d handed out twice", b);
    bm->ref[b] = 1;
    return b;
}

void bm_incref(struct block_manager *bm, int b)
{
    CHECK(b > 0 && b < bm->n_blocks, "block %d out of range", b);
    if (bm->ref[b] == 0) {
        CHECK(bm->hash[b] != 0, "incref of free block %d", b);
        lru_remove(bm, b);
    }
    bm->ref[b]++;
}

void bm_decref(struct block_manager *bm, int b)
{
    CHECK(b > 0 && b < bm->n_blocks && bm->ref[b] > 0, "decref of block %d (ref %d)", b,
          b > 0 && b < bm->n_blocks ? bm->ref[b] : -1);
    if (--bm->ref[b] > 0) return;
    if (bm->hash[b] != 0) lru_push(bm, b);
    else bm->free_stack[bm->n_free++] = b;
}

uint64_t bm_hash_block(uint64_t parent, const int32_t *tokens, int n, uint64_t salt)
{
    /* FNV-1a over the words, then a splitmix64 finaliser; never 0 (0 means "no hash") */
    uint64_t h = 0xcbf29ce484222325ull ^ parent ^ (salt * 0x9e3779b97f4a7c15ull);
    for (int i = 0; i < n; i++) {
        h ^= (uint32_t)tokens[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 30; h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27; h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return h ? h : 1;
}

int bm_find(const struct block_manager *bm, uint64_t h, uint64_t parent, const int32_t *tokens)
{
    for (int b = bm->bucket[h & (uint64_t)(bm->n_buckets - 1)]; b >= 0; b = bm->chain[b]) {
        if (bm->hash[b] == h && bm->parent[b] == parent &&
            memcmp(bm->tokens + (size_t)b * bm->block_size, tokens, sizeof(int32_t) * bm->block_size) == 0)
            return b;
    }
    return -1;
}

void bm_register(struct block_manager *bm, int b, uint64_t h, uint64_t parent, const int32_t *tokens)
{
    CHECK(bm->ref[b] > 0, "register of unreferenced block %d", b);
    if (bm->hash[b] != 0 || bm_find(bm, h, parent, tokens) >= 0) return;
    bm->hash[b] = h;
    bm->parent[b] = parent;
    memcpy(bm->tokens + (size_t)b * bm->block_size, tokens, sizeof(int32_t) * bm->block_size);
    int *head = &bm->bucket[h & (uint64_t)(bm->n_buckets - 1)];
    bm->chain[b] = *head;
    *head = b;
}

int bm_lookup(struct block_manager *bm, uint64_t h, uint64_t parent, const int32_t *tokens)
{
    bm->queries++;
    int b = bm_find(bm, h, parent, tokens);
    if (b >= 0) bm->hits++;
    return b;
}
