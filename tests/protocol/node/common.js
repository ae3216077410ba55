// Shared by the scripts here: arguments, a kafkajs client whose logs go to stderr, and JSON
// lines on stdout (what the Python tests read).
'use strict'
process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1' // the default (Java's murmur2) is the one we test
const { Kafka, logLevel } = require('kafkajs')

function args(argv = process.argv.slice(2)) {
  const out = {}
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--')) throw new Error(`expected --name value, got ${argv[i]}`)
    out[argv[i].slice(2)] = argv[i + 1]
  }
  for (const required of ['bootstrap', 'topic']) {
    if (out[required] === undefined) throw new Error(`--${required} is required`)
  }
  return out
}

function client(bootstrap, clientId) {
  return new Kafka({
    clientId,
    brokers: [bootstrap],
    logLevel: logLevel.WARN,
    logCreator: () => ({ namespace, level, label, log }) => {
      process.stderr.write(`${label} ${namespace} ${JSON.stringify(log)}\n`)
    },
  })
}

function emit(object) {
  process.stdout.write(JSON.stringify(object) + '\n')
}

function message(partition, m) {
  const headers = {}
  for (const [name, value] of Object.entries(m.headers || {})) headers[name] = String(value)
  return {
    event: 'message',
    partition,
    offset: m.offset,
    key: m.key === null ? null : m.key.toString(),
    value: m.value === null ? null : m.value.toString(),
    headers,
  }
}

function main(run) {
  run().then(
    () => process.exit(0),
    (error) => {
      process.stderr.write(`${error.stack || error}\n`)
      process.exit(1)
    },
  )
}

module.exports = { args, client, emit, main, message }
