// A second, independent reader of the Iceberg tables sellersnap writes,
// from the bucket alone: version-hint.text → v<N>.metadata.json → the
// current snapshot's manifest list → its manifests (Avro, read with avsc,
// deflate by Node's zlib) → every live data file's Parquet footer and
// partition columns (hyparquet). It checks, and fails on, what iceberg-go
// would not notice: a data file whose footer row count differs from the
// manifest's, a partition column whose values in the file differ from the
// manifest's partition tuple, a column without its Iceberg field id, a file
// live twice. Prints one JSON object: the files with their partition and
// record count. Usage: node iceberg.mjs /path/to/table
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import zlib from 'node:zlib'
import avro from 'avsc'
import { asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects } from 'hyparquet'
import { compressors } from 'hyparquet-compressors'

const table = process.argv[2]
const local = loc => loc.startsWith('file://') ? fileURLToPath(loc) : loc
const version = readFileSync(`${table}/metadata/version-hint.text`, 'utf8').trim()
const metadata = JSON.parse(readFileSync(`${table}/metadata/v${version}.metadata.json`, 'utf8'))
if (metadata['format-version'] !== 2) throw new Error(`format-version ${metadata['format-version']}`)
const schema = metadata.schemas.find(s => s['schema-id'] === metadata['current-schema-id'])
const spec = metadata['partition-specs'].find(s => s['spec-id'] === metadata['default-spec-id'])
const snap = metadata.snapshots.find(s => s['snapshot-id'] === metadata['current-snapshot-id'])
if (!snap) throw new Error('no current snapshot')

// Iceberg's snapshot ids use all 63 bits: longs as BigInt, never a lossy
// JavaScript number.
const longType = avro.types.LongType.__with({
  fromBuffer: buf => buf.readBigInt64LE(),
  toBuffer: n => { const b = Buffer.alloc(8); b.writeBigInt64LE(BigInt(n)); return b },
  fromJSON: BigInt,
  toJSON: Number,
  isValid: n => typeof n === 'bigint',
  compare: (a, b) => a === b ? 0 : a < b ? -1 : 1,
})

function readAvro(path) {
  return new Promise((resolve, reject) => {
    const records = []
    avro.createFileDecoder(path, {
      codecs: { deflate: (buf, cb) => zlib.inflateRaw(buf, cb) },
      parseHook: schema => avro.Type.forSchema(schema, { registry: { long: longType } }),
    })
      .on('data', r => records.push(r)).on('end', () => resolve(records)).on('error', reject)
  })
}

const dateOf = days => new Date(days * 86400000).toISOString().slice(0, 10)
const files = []
const seen = new Set()
for (const mf of await readAvro(local(snap['manifest-list']))) {
  if (mf.content !== 0) continue
  const entries = await readAvro(local(mf.manifest_path))
  for (const e of entries) {
    if (e.status === 2) continue
    const df = e.data_file
    if (seen.has(df.file_path)) throw new Error(`${df.file_path} is live twice`)
    seen.add(df.file_path)
    const partition = {}
    for (const f of spec.fields) {
      const v = df.partition[f.name]
      const col = schema.fields.find(c => c.id === f['source-id'])
      partition[f.name] = v === null || v === undefined ? null : col.type === 'date' ? dateOf(typeof v === 'number' ? v : Math.round(v.getTime() / 86400000)) : String(v)
    }
    const file = await asyncBufferFromFile(local(df.file_path))
    if (file.byteLength !== Number(df.file_size_in_bytes)) throw new Error(`${df.file_path}: ${file.byteLength} bytes, the manifest says ${df.file_size_in_bytes}`)
    const footer = await parquetMetadataAsync(file)
    if (BigInt(footer.num_rows) !== BigInt(df.record_count)) throw new Error(`${df.file_path}: ${footer.num_rows} rows, the manifest says ${df.record_count}`)
    for (const el of footer.schema.slice(1)) {
      const col = schema.fields.find(c => c.name === el.name)
      if (!col || el.field_id !== col.id) throw new Error(`${df.file_path}: column ${el.name} has field id ${el.field_id}, the table's is ${col?.id}`)
    }
    // The partition columns are in the file, equal to the manifest's tuple.
    const names = spec.fields.map(f => schema.fields.find(c => c.id === f['source-id']).name)
    const rows = await parquetReadObjects({ file, metadata: footer, columns: names, compressors })
    for (const row of rows) {
      for (const [i, f] of spec.fields.entries()) {
        let v = row[names[i]]
        if (v instanceof Date) v = v.toISOString().slice(0, 10)
        if ((v ?? null) !== partition[f.name] && String(v) !== partition[f.name]) {
          throw new Error(`${df.file_path}: ${names[i]} is ${v} in the file, ${partition[f.name]} in the manifest`)
        }
      }
    }
    files.push({ path: df.file_path, partition, records: Number(df.record_count) })
  }
}
process.stdout.write(JSON.stringify({ snapshot: String(snap['snapshot-id']), files }) + '\n')
