// A kafkajs producer (acks=all; idempotent with --idempotent 1): --count records "key-i" / "value-i" with a header
// source=kafkajs, sent in batches of 100. Prints one line per acknowledged batch partition and
// a summary: {"event":"produced","count":N}.
'use strict'
const { args, client, emit, main } = require('./common')

main(async () => {
  const options = args()
  const count = Number(options.count || 10)
  const producer = client(options.bootstrap, 'streams-test-producer').producer({
    idempotent: options.idempotent === '1',
  })
  await producer.connect()
  for (let start = 0; start < count; start += 100) {
    const messages = []
    for (let i = start; i < Math.min(start + 100, count); i++) {
      messages.push({ key: `key-${i}`, value: `value-${i}`, headers: { source: 'kafkajs' } })
    }
    const acks = await producer.send({ topic: options.topic, acks: -1, messages })
    for (const ack of acks) {
      emit({ event: 'ack', partition: ack.partition, baseOffset: ack.baseOffset, errorCode: ack.errorCode })
    }
  }
  await producer.disconnect()
  emit({ event: 'produced', count })
})
