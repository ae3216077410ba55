// The classic kafkajs demo's consumer: group test-group reads test-topic from the beginning
// and prints every message until Ctrl-C (then it leaves the group and exits).
//
//   node consumer.js                              # KAFKA_BROKERS=host:port to point elsewhere
'use strict'
const { Kafka } = require('kafkajs')

const kafka = new Kafka({
  clientId: 'my-app',
  brokers: (process.env.KAFKA_BROKERS || 'localhost:9092').split(','),
})
const consumer = kafka.consumer({ groupId: 'test-group' })

async function main() {
  await consumer.connect()
  await consumer.subscribe({ topic: 'test-topic', fromBeginning: true })
  await consumer.run({
    eachMessage: async ({ topic, partition, message }) => {
      console.log(
        JSON.stringify({
          topic,
          partition,
          offset: message.offset,
          key: message.key && message.key.toString(),
          value: message.value.toString(),
        }),
      )
    },
  })
}

consumer.on(consumer.events.CRASH, ({ payload }) => {
  if (!payload.restart) process.exit(1) // kafkajs gave up: say so with the exit code
})

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    consumer.disconnect().then(
      () => process.exit(0),
      () => process.exit(1),
    )
  })
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
